/* json.h - writing JSON text: the one string escaper every JSON producer in
 * thaw uses (metrics, status, stat, the test VMM's report). */
#ifndef THAW_JSON_H
#define THAW_JSON_H

#include <stdio.h>

/* s as a quoted JSON string: '"' and '\' escaped, control characters as \u00XX. */
void json_write_str(FILE *f, const char *s);

#endif
