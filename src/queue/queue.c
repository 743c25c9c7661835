/*
 * The queue (include/tern/queue.h): ports, submission, the scheduler,
 * jobs, retries, DSNs and the control calls, over the store (store.h).
 * Placeholder until the Step 7 implementation lands.
 */
