/* overlay.c - the copy-on-write layer of a --rw file (see overlay.h).
 *
 * map layout: a 4096-byte header (magic, version, size, chunk size, base
 * ETag, location, XXH3-64 of the rest of the header) and one byte per chunk,
 * 0 = clean (read the base), 1 = dirty (read here).  Anything else in a map
 * byte means damage, and the overlay is refused. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/err.h"
#include "../common/log.h"
#include "../common/xxh.h"
#include "overlay.h"
#include "../common/fsutil.h"

#define OV_MAGIC "THAWOVL\0"
#define OV_VERSION 1
#define OV_HDR 4096

struct overlay {
	char dir[4200];
	int data_fd, map_fd;
	uint64_t size, cs, n;
	uint8_t *dirty;       /* in memory: set at install, before it is recorded */
	uint64_t ndirty;
	pthread_mutex_t mu;   /* pending list, serialises syncs */
	uint64_t *pend;
	size_t npend, cap;
	int data_unsynced;    /* writes since the last fdatasync */
};

static void make_header(const struct overlay *o, const char *loc, const char *etag, uint8_t *h)
{
	memset(h, 0, OV_HDR);
	memcpy(h, OV_MAGIC, 8);
	uint32_t v = OV_VERSION;
	memcpy(h + 8, &v, 4);
	memcpy(h + 16, &o->size, 8);
	memcpy(h + 24, &o->cs, 8);
	snprintf((char *)h + 64, 256, "%s", etag);
	snprintf((char *)h + 320, OV_HDR - 320 - 8, "%s", loc);
	uint64_t sum = XXH3_64bits(h, OV_HDR - 8);
	memcpy(h + OV_HDR - 8, &sum, 8);
}

/* Check an existing map against what we expect; fills o->dirty. */
static int load_map(struct overlay *o, const uint8_t *want, const char *etag)
{
	uint8_t *have = malloc(OV_HDR);
	if (!have)
		return err_set(ENOMEM, "out of memory");
	int rc = fsu_pread_full(o->map_fd, have, OV_HDR, 0);
	struct stat st;
	if (rc < 0 || fstat(o->map_fd, &st) < 0) {
		free(have);
		return err_set(EIO, "overlay map %s/map: unreadable or truncated header; refusing it", o->dir);
	}
	uint64_t sum;
	memcpy(&sum, have + OV_HDR - 8, 8);
	if (memcmp(have, OV_MAGIC, 8) || XXH3_64bits(have, OV_HDR - 8) != sum) {
		free(have);
		return err_set(EIO, "overlay map %s/map is damaged (bad magic or checksum); refusing it rather "
			       "than lose writes (move the directory away to discard them)", o->dir);
	}
	/* Everything but the ETag must match exactly. */
	int geometry = memcmp(have, want, 64) || strcmp((char *)have + 320, (char *)want + 320);
	int other_version = strcmp((char *)have + 64, etag) != 0;
	char old_etag[256];
	snprintf(old_etag, sizeof old_etag, "%s", (char *)have + 64);
	free(have);
	if (geometry)
		return err_set(EIO, "overlay %s was made for another object or thaw version; refusing it", o->dir);
	if ((uint64_t)st.st_size != OV_HDR + o->n)
		return err_set(EIO, "overlay map %s/map has %lld bytes, expected %llu; refusing it", o->dir,
			       (long long)st.st_size, (unsigned long long)(OV_HDR + o->n));
	if (o->n && fsu_pread_full(o->map_fd, o->dirty, o->n, OV_HDR) < 0)
		return err_set(EIO, "read overlay map %s/map: %s", o->dir, strerror(errno));
	for (uint64_t i = 0; i < o->n; i++) {
		if (o->dirty[i] > 1)
			return err_set(EIO, "overlay map %s/map: entry %llu is %u, not 0 or 1; refusing it", o->dir,
				       (unsigned long long)i, o->dirty[i]);
		o->ndirty += o->dirty[i];
	}
	if (other_version && o->ndirty)
		return err_set(EIO, "overlay %s holds %llu written chunks made over version %s of the object, "
			       "which is now %s; refusing to mix them (move the directory away to discard them)",
			       o->dir, (unsigned long long)o->ndirty, old_etag, etag);
	return other_version ? 1 : 0; /* 1: nothing written yet; the caller restamps it */
}

int overlay_open(const char *root, const char *loc, const char *base_etag, uint64_t size, uint64_t cs, int create,
		 struct overlay **out)
{
	*out = NULL;
	struct overlay *o = calloc(1, sizeof *o);
	if (!o)
		return err_set(ENOMEM, "out of memory");
	o->data_fd = o->map_fd = -1;
	o->size = size;
	o->cs = cs;
	o->n = (size + cs - 1) / cs;
	pthread_mutex_init(&o->mu, NULL);
	snprintf(o->dir, sizeof o->dir, "%s/%016llx", root, (unsigned long long)XXH3_64bits(loc, strlen(loc)));
	uint8_t *want = malloc(OV_HDR);
	o->dirty = calloc(o->n ? o->n : 1, 1);
	int rc = want && o->dirty ? 0 : err_set(ENOMEM, "out of memory");
	char p[4300];
	snprintf(p, sizeof p, "%s/map", o->dir);
	if (rc == 0 && !create && access(p, F_OK) < 0) {
		free(want);
		overlay_close(o);
		return 0; /* nothing was ever written to this file */
	}
	if (rc == 0 && (rc = fsu_mkdir_p(o->dir, 0700)) < 0)
		rc = err_set(-rc, "create overlay directory %s: %s", o->dir, strerror(-rc));
	if (rc == 0) {
		make_header(o, loc, base_etag, want);
		o->map_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (o->map_fd < 0)
			rc = err_set(errno, "open overlay map %s: %s", p, strerror(errno));
	}
	struct stat st;
	int fresh = 0;
	if (rc == 0) {
		if (fstat(o->map_fd, &st) < 0)
			rc = err_set(errno, "stat %s: %s", p, strerror(errno));
		else if (st.st_size == 0)
			fresh = 1;
		else if ((rc = load_map(o, want, base_etag)) == 1) {
			log_warn("overlay %s: the object changed but nothing was written over the old version; "
				 "starting afresh", o->dir);
			fresh = 1;
			rc = 0;
		}
	}
	if (rc == 0) {
		snprintf(p, sizeof p, "%s/data", o->dir);
		o->data_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (o->data_fd < 0)
			rc = err_set(errno, "open overlay data %s: %s", p, strerror(errno));
		else if (fstat(o->data_fd, &st) < 0)
			rc = err_set(errno, "stat %s: %s", p, strerror(errno));
		else if (o->ndirty && (uint64_t)st.st_size != size)
			rc = err_set(EIO, "overlay data %s has %lld bytes, expected %llu; refusing it", p,
				     (long long)st.st_size, (unsigned long long)size);
		else if (!o->ndirty && ftruncate(o->data_fd, (off_t)size) < 0)
			rc = err_set(errno, "size overlay data %s: %s", p, strerror(errno));
	}
	if (rc == 0 && fresh) {
		/* Header and an all-clean map, durable before any chunk can be recorded. */
		memset(o->dirty, 0, o->n);
		uint8_t *zero = calloc(o->n ? o->n : 1, 1);
		if (!zero || ftruncate(o->map_fd, 0) < 0 || fsu_pwrite_full(o->map_fd, want, OV_HDR, 0) < 0 ||
		    fsu_pwrite_full(o->map_fd, zero, o->n, OV_HDR) < 0 || fdatasync(o->map_fd) < 0)
			rc = err_set(errno ? errno : ENOMEM, "write overlay map %s/map: %s", o->dir, strerror(errno));
		free(zero);
	}
	free(want);
	if (rc < 0) {
		overlay_close(o);
		return rc;
	}
	if (o->ndirty)
		log_info("overlay %s: %llu written chunks kept from before", o->dir, (unsigned long long)o->ndirty);
	*out = o;
	return 0;
}

int overlay_dirty(const struct overlay *o, uint64_t idx)
{
	return idx < o->n && __atomic_load_n(&o->dirty[idx], __ATOMIC_ACQUIRE);
}

uint64_t overlay_ndirty(const struct overlay *o) { return __atomic_load_n(&o->ndirty, __ATOMIC_RELAXED); }
const char *overlay_dir(const struct overlay *o) { return o->dir; }

int overlay_read(struct overlay *o, void *buf, size_t len, uint64_t off)
{
	int rc = fsu_pread_full(o->data_fd, buf, len, off);
	return rc < 0 ? err_set(-rc, "read overlay data in %s: %s", o->dir, strerror(-rc)) : 0;
}

int overlay_write(struct overlay *o, const void *buf, size_t len, uint64_t off)
{
	int rc = fsu_pwrite_full(o->data_fd, buf, len, off);
	if (rc < 0)
		return err_set(-rc, "write overlay data in %s: %s%s", o->dir, strerror(-rc),
			       rc == -ENOSPC ? " (cache disk full)" : "");
	__atomic_store_n(&o->data_unsynced, 1, __ATOMIC_RELEASE);
	return 0;
}

int overlay_install(struct overlay *o, uint64_t idx, const void *buf, size_t len)
{
	if (idx >= o->n)
		return err_set(EINVAL, "overlay %s: chunk %llu beyond the end", o->dir, (unsigned long long)idx);
	int rc = overlay_write(o, buf, len, idx * o->cs);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&o->mu);
	if (o->npend == o->cap) {
		size_t nc = o->cap ? o->cap * 2 : 64;
		uint64_t *np = realloc(o->pend, nc * sizeof *np);
		if (!np) {
			pthread_mutex_unlock(&o->mu);
			return err_set(ENOMEM, "out of memory");
		}
		o->pend = np;
		o->cap = nc;
	}
	o->pend[o->npend++] = idx;
	__atomic_store_n(&o->dirty[idx], 1, __ATOMIC_RELEASE);
	__atomic_add_fetch(&o->ndirty, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&o->mu);
	return 0;
}

int overlay_sync(struct overlay *o)
{
	pthread_mutex_lock(&o->mu);
	int rc = 0;
	if (__atomic_exchange_n(&o->data_unsynced, 0, __ATOMIC_ACQ_REL) && fdatasync(o->data_fd) < 0) {
		__atomic_store_n(&o->data_unsynced, 1, __ATOMIC_RELEASE);
		rc = err_set(errno, "fdatasync overlay data in %s: %s", o->dir, strerror(errno));
	}
	/* Only now are the copied-in chunks durable: record them. */
	static const uint8_t one = 1;
	size_t i = 0;
	for (; rc == 0 && i < o->npend; i++)
		if (pwrite(o->map_fd, &one, 1, (off_t)(OV_HDR + o->pend[i])) != 1)
			rc = err_set(errno, "write overlay map in %s: %s", o->dir, strerror(errno));
	if (rc == 0 && o->npend && fdatasync(o->map_fd) < 0)
		rc = err_set(errno, "fdatasync overlay map in %s: %s", o->dir, strerror(errno));
	if (rc == 0)
		o->npend = 0;
	pthread_mutex_unlock(&o->mu);
	return rc;
}

void overlay_close(struct overlay *o)
{
	if (!o)
		return;
	if (o->data_fd >= 0 && o->map_fd >= 0 && overlay_sync(o) < 0)
		log_error("%s", err_msg());
	if (o->data_fd >= 0)
		close(o->data_fd);
	if (o->map_fd >= 0)
		close(o->map_fd);
	free(o->dirty);
	free(o->pend);
	pthread_mutex_destroy(&o->mu);
	free(o);
}
