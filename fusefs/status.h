/* status.h - rendering `thaw status` inside the mount daemon. */
#ifndef THAW_FUSEFS_STATUS_H
#define THAW_FUSEFS_STATUS_H

#include <stdio.h>

#include "fs.h"

/* JSON (one object and a newline), or a table `width` columns wide whose
 * first line, "# idle 0|1", tells a live client whether hydration is still
 * going on. */
void status_write(struct thawfs *fs, FILE *out, int json, int width);

#endif
