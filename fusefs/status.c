/* status.c - what `thaw status` shows: the mount, its store, the hydrator
 * and, per file the mount has touched, how much is present locally, what was
 * fetched, how fast, and when it will be complete; files not touched yet are
 * counted (a bucket may list thousands).  Rendered here, in the
 * daemon, as JSON or as a table, so the client stays a pipe. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../common/progress.h"
#include "../common/json.h"
#include "../common/timeutil.h"
#include "file.h"
#include "hydrator.h"
#include "status.h"

struct frow {
	char path[4096];
	uint64_t size, nchunks, chunk_size, present_chunks, present_bytes, fetched, fetches, failures, verify_failures;
	uint64_t cache_hits, cache_rejects, inflight, dirty;
	uint64_t reads, pt_total;
	int pt_opens;
	double rate, eta;
	int open, busy, image, hydrate;
	char err[ERR_MSG_MAX];
};

static const char *hydrate_name(int h)
{
	static const char *names[] = { "no", "queued", "done", "failed" };
	return h >= 0 && h <= 3 ? names[h] : "?";
}

/* A count of the files the mount has not touched yet, and their listed size. */
struct untouched {
	uint64_t files, bytes;
};

/* Fill r from n; 0 if n is a file the mount has touched (one it has not is
 * counted in u instead). */
static int row_of(struct tnode *n, struct frow *r, struct untouched *u)
{
	if (tree_gone(n))
		return -1; /* removed from the store, or replaced by a newer node */
	struct tfile *f = __atomic_load_n(&n->f, __ATOMIC_ACQUIRE);
	if (!n->is_dir && !f) {
		u->files++;
		u->bytes += n->list_size;
	}
	if (n->is_dir || !f)
		return -1;
	memset(r, 0, sizeof *r);
	tree_path(n, r->path, sizeof r->path);
	r->size = file_size(n);
	r->eta = -1;
	r->hydrate = __atomic_load_n(&f->hydrate, __ATOMIC_RELAXED);
	if (pthread_mutex_trylock(&f->mu)) {
		r->busy = 1; /* opening or closing its blob right now */
		return 0;
	}
	r->fetched = f->fetched_before;
	r->rate = f->rate;
	r->reads = __atomic_load_n(&f->reads, __ATOMIC_RELAXED);
	r->pt_opens = f->pt_opens;
	r->pt_total = f->pt_total;
	snprintf(r->err, sizeof r->err, "%s", f->err ? f->err : "");
	if (f->b) {
		struct blob_stats st;
		blob_get_stats(f->b, &st);
		r->open = 1;
		r->image = blob_is_image(f->b);
		r->nchunks = st.nchunks;
		r->present_chunks = st.chunks_present;
		r->chunk_size = st.chunk_size;
		r->present_bytes = st.chunks_present * st.chunk_size;
		if (st.nchunks && blob_chunk_present(f->b, st.nchunks - 1))
			r->present_bytes -= st.chunk_size - blob_chunk_len(f->b, st.nchunks - 1);
		if (r->present_bytes > st.size) /* a short last chunk still unchecked from the cache */
			r->present_bytes = st.size;
		r->fetched += st.bytes_fetched;
		r->fetches = st.fetches;
		r->failures = st.fetch_failures;
		r->verify_failures = st.verify_failures;
		r->cache_hits = st.cache_hits_at_open;
		r->cache_rejects = st.cache_rejects;
		r->inflight = st.inflight;
		r->dirty = f->ov ? overlay_ndirty(f->ov) : 0;
		if (r->present_bytes >= r->size)
			r->eta = 0;
		else if (r->rate > 0)
			r->eta = (double)(r->size - r->present_bytes) / r->rate;
	}
	pthread_mutex_unlock(&f->mu);
	return 0;
}

static void eta_text(double eta, char *buf, size_t n)
{
	if (eta < 0)
		snprintf(buf, n, "-");
	else if (eta == 0)
		snprintf(buf, n, "done");
	else if (eta < 3600)
		snprintf(buf, n, "%d:%02d", (int)eta / 60, (int)eta % 60);
	else
		snprintf(buf, n, "%dh%02d", (int)(eta / 3600), ((int)eta % 3600) / 60);
}

void status_write(struct thawfs *fs, FILE *o, int json, int width)
{
	struct store_stats *ss = &fs->s->stats;
	uint64_t q = 0, cur = 0, hdone = 0, hfailed = 0;
	if (fs->hy)
		hydrator_state(fs->hy, &q, &cur, &hdone, &hfailed);
	struct tnode *curn = cur ? tree_get(&fs->tree, cur) : NULL;
	char curpath[4096] = "";
	if (curn)
		tree_path(curn, curpath, sizeof curpath);
	double up = (double)(now_ns() - fs->t0_ns) / 1e9;
	uint64_t max = tree_max_ino(&fs->tree);
	struct frow r;
	struct untouched u = { 0, 0 };

	if (json) {
		fprintf(o, "{\"mountpoint\":");
		json_write_str(o, fs->mnt_abs);
		fprintf(o, ",\"url\":");
		json_write_str(o, fs->url_text);
		fprintf(o, ",\"cache\":");
		json_write_str(o, fs->cache_root);
		fprintf(o, ",\"rw\":%s,\"pid\":%d,\"uptime_s\":%.1f,", fs->o.rw ? "true" : "false", (int)getpid(), up);
		fprintf(o, "\"store\":{\"gets\":%llu,\"heads\":%llu,\"lists\":%llu,\"bytes_in\":%llu,\"retries\":%llu,"
			   "\"failures\":%llu},",
			(unsigned long long)atomic_load(&ss->gets), (unsigned long long)atomic_load(&ss->heads),
			(unsigned long long)atomic_load(&ss->lists), (unsigned long long)atomic_load(&ss->bytes_in),
			(unsigned long long)atomic_load(&ss->retries), (unsigned long long)atomic_load(&ss->failures));
		fprintf(o, "\"hydrator\":{\"enabled\":%s,\"queued\":%llu,\"done\":%llu,\"failed\":%llu,\"current\":",
			fs->hy ? "true" : "false", (unsigned long long)q, (unsigned long long)hdone,
			(unsigned long long)hfailed);
		json_write_str(o, curpath);
		fprintf(o, "},\"files\":[");
		int first = 1;
		for (uint64_t ino = 1; ino <= max; ino++) {
			struct tnode *n = tree_get(&fs->tree, ino);
			if (!n || row_of(n, &r, &u) < 0)
				continue;
			fprintf(o, "%s{\"path\":", first ? "" : ",");
			first = 0;
			json_write_str(o, r.path);
			fprintf(o, ",\"size\":%llu,\"open\":%s,\"kind\":\"%s\",\"chunks\":%llu,\"chunk_size\":%llu,"
				   "\"chunks_present\":%llu,\"present_bytes\":%llu,\"percent\":%.2f,\"bytes_fetched\":%llu,\"fetches\":%llu,"
				   "\"fetch_failures\":%llu,\"verify_failures\":%llu,\"cache_hits_at_open\":%llu,\"cache_rejects\":%llu,"
				   "\"inflight\":%llu,\"rate_bps\":%.0f,\"eta_s\":%.1f,\"hydrate\":\"%s\","
				   "\"dirty_chunks\":%llu,\"reads\":%llu,\"passthrough_opens\":%d,"
				   "\"passthrough_total\":%llu,\"errors\":%llu,\"last_error\":",
				(unsigned long long)r.size, r.open ? "true" : "false",
				r.busy ? "busy" : !r.open ? "unknown" : r.image ? "thaw-image" : "object",
				(unsigned long long)r.nchunks, (unsigned long long)r.chunk_size,
				(unsigned long long)r.present_chunks,
				(unsigned long long)r.present_bytes,
				r.size ? 100.0 * (double)r.present_bytes / (double)r.size : (r.open ? 100.0 : 0.0),
				(unsigned long long)r.fetched, (unsigned long long)r.fetches,
				(unsigned long long)r.failures, (unsigned long long)r.verify_failures,
				(unsigned long long)r.cache_hits, (unsigned long long)r.cache_rejects,
				(unsigned long long)r.inflight, r.rate, r.eta,
				hydrate_name(r.hydrate), (unsigned long long)r.dirty, (unsigned long long)r.reads,
				r.pt_opens, (unsigned long long)r.pt_total, (unsigned long long)(n->f ? n->f->nerrors : 0));
			json_write_str(o, r.err);
			fprintf(o, "}");
		}
		fprintf(o, "],\"untouched\":{\"files\":%llu,\"bytes\":%llu}}\n", (unsigned long long)u.files,
			(unsigned long long)u.bytes);
		return;
	}

	/* The table.  First line is for the client: "# idle 0|1". */
	fprintf(o, "# idle %d\n", !q && !cur);
	char a[32], b[32];
	fprintf(o, "%s on %s (%s, cache %s)\n", fs->url_text, fs->mnt_abs, fs->o.rw ? "read-write" : "read-only",
		fs->cache_root);
	fmt_bytes((double)atomic_load(&ss->bytes_in), a, sizeof a);
	fprintf(o, "store: %llu GETs, %s in, %llu retries, %llu failures",
		(unsigned long long)atomic_load(&ss->gets), a, (unsigned long long)atomic_load(&ss->retries),
		(unsigned long long)atomic_load(&ss->failures));
	if (fs->hy)
		fprintf(o, "; hydrator: %s%s, %llu queued, %llu done, %llu failed", cur ? "on " : "idle",
			curpath, (unsigned long long)q, (unsigned long long)hdone, (unsigned long long)hfailed);
	fputc('\n', o);
	int bar = width >= 110 ? 30 : width >= 90 ? 20 : 10;
	int pathw = width - bar - 62;
	if (pathw < 12)
		pathw = 12;
	fprintf(o, "%-*s %10s  %-*s %6s %10s %12s %6s\n", pathw, "FILE", "SIZE", bar + 2, "PRESENT", "%", "FETCHED",
		"RATE", "ETA");
	int any = 0;
	for (uint64_t ino = 1; ino <= max; ino++) {
		struct tnode *n = tree_get(&fs->tree, ino);
		if (!n || row_of(n, &r, &u) < 0)
			continue;
		any = 1;
		double pct = r.size ? 100.0 * (double)r.present_bytes / (double)r.size : 100.0;
		char barbuf[64];
		int fill = r.open ? (int)(pct * bar / 100.0) : 0;
		for (int i = 0; i < bar; i++)
			barbuf[i] = i < fill ? '#' : '.';
		barbuf[bar] = 0;
		char rate[40], eta[32], path[4096];
		fmt_bytes((double)r.size, a, sizeof a);
		fmt_bytes((double)r.fetched, b, sizeof b);
		fmt_bytes(r.rate, rate, sizeof rate);
		strcat(rate, "/s");
		eta_text(r.eta, eta, sizeof eta);
		size_t pl = strlen(r.path);
		snprintf(path, sizeof path, "%s%s", pl > (size_t)pathw ? "..." : "",
			 pl > (size_t)pathw ? r.path + pl - (size_t)pathw + 3 : r.path);
		if (r.open)
			fprintf(o, "%-*s %10s  [%s] %5.1f%% %10s %12s %6s", pathw, path, a, barbuf, pct, b, rate, eta);
		else
			fprintf(o, "%-*s %10s  %-*s %6s %10s %12s %6s", pathw, path, a, bar + 2,
				r.busy ? "(opening)" : "(not open)", "-", b, "-", "-");
		if (r.dirty)
			fprintf(o, "  %llu chunks written", (unsigned long long)r.dirty);
		if (r.hydrate == 3 || (r.err[0] && r.open && r.present_bytes < r.size))
			fprintf(o, "\n    last error: %s", r.err);
		fputc('\n', o);
	}
	if (!any)
		fprintf(o, "(no file opened yet)\n");
	if (u.files) {
		fmt_bytes((double)u.bytes, a, sizeof a);
		fprintf(o, "%s%llu listed file%s (%s) not looked up yet in this mount\n", any ? "and " : "",
			(unsigned long long)u.files, u.files == 1 ? "" : "s", a);
	}
}
