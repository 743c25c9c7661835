/*
 * The queue's store (store.h). Placeholder until the Step 7
 * implementation lands.
 */
