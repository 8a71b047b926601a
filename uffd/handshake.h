/* handshake.h - Firecracker's snapshot-restore UFFD handshake, handler side.
 *
 * Firecracker connects to the handler's Unix socket and sends one message: a
 * JSON array of guest region mappings, with the userfaultfd attached as
 * SCM_RIGHTS.  Three field sets have shipped:
 *   v1.1-1.6   {"base_host_virt_addr", "size", "offset"}            (4 KiB pages)
 *   v1.7-1.11  ... + "page_size_kib"  (the value is in BYTES despite the name)
 *   v1.12+     ... + "page_size"      (bytes; some builds send both)
 * hs_parse accepts all three, ignores keys it does not know (so a future field
 * does not break old handlers), and refuses anything it cannot serve safely:
 * bad JSON, missing or non-integer fields, page sizes other than 4 KiB/2 MiB,
 * unaligned or empty regions, regions overlapping in address or in image
 * offset, and regions reaching beyond the image. */
#ifndef THAW_UFFD_HANDSHAKE_H
#define THAW_UFFD_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HS_MAX_MSG (64u << 10) /* Firecracker's own handlers read 1 KiB; leave room */
#define HS_MAX_REGIONS 1024
#define HS_MAX_FDS 4           /* secret-free builds send 3; we refuse those */

/* Which page-size fields the client sent (bit set), for the log line. */
#define HS_F_PAGE_SIZE_KIB 1u
#define HS_F_PAGE_SIZE 2u

struct hs_region {
	uint64_t base;      /* base_host_virt_addr */
	uint64_t size;
	uint64_t offset;    /* where the region's bytes start in the memory image */
	uint64_t page_size; /* 4096 or 2 MiB */
};

struct hs_msg {
	struct hs_region *r; /* sorted by base address */
	size_t n;
	unsigned fields;     /* HS_F_* seen in any region */
};

/* Parse and validate one handshake body against an image of image_size bytes.
 * 0 on success (free with hs_free), or -EINVAL with err_msg() naming the
 * region and the field at fault. */
int hs_parse(const char *buf, size_t len, uint64_t image_size, struct hs_msg *out);
void hs_free(struct hs_msg *m);
/* Which Firecracker releases send this field set, for logs. */
const char *hs_fieldset_name(unsigned fields);

/* Length of the complete top-level JSON value at the start of buf (after
 * leading whitespace), 0 if more bytes are needed, or -EINVAL if buf cannot be
 * the start of an array.  Lets the reader stop at the message's end without
 * waiting for EOF (Firecracker keeps the socket open). */
ssize_t hs_value_len(const char *buf, size_t len);

/* Receive one handshake from a connected socket: the first recvmsg must carry
 * the descriptor; further reads follow until the JSON array is complete, at
 * most HS_MAX_MSG bytes and timeout_ms in all.  On success *fd is the received
 * descriptor (caller owns it) and buf[0..*len) the body.  Every descriptor
 * received is closed on failure.  -EPROTO/-ETIMEDOUT/-EMSGSIZE + err_msg(). */
int hs_recv(int sock, int timeout_ms, char *buf, size_t cap, size_t *len, int *fd);

#endif
