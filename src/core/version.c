/*
 * The library's version at run time (the headers give the one compiled
 * against).
 */
#include "internal.h"

const char *tern_version_string(void) { return TERN_VERSION_STRING; }
