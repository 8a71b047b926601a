/* metrics.c - per-connection uffd metrics and their JSON form (see metrics.h). */
#include <string.h>

#include "metrics.h"
#include "../common/json.h"

#define LD(p) __atomic_load_n(p, __ATOMIC_RELAXED)

static const char *const kind_names[FK_COUNT] = { "memory", "store", "zero", "duplicate", "poisoned", "unknown" };

void metrics_add(uint64_t *counter, uint64_t v) { __atomic_fetch_add(counter, v, __ATOMIC_RELAXED); }
uint64_t metrics_get(const uint64_t *counter) { return LD(counter); }

void metrics_set_time(uint64_t *t, uint64_t ns)
{
	uint64_t zero = 0;
	__atomic_compare_exchange_n(t, &zero, ns, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

void metrics_fault(struct sess_metrics *m, enum fault_kind k, uint64_t lat_ns)
{
	metrics_add(&m->faults[k], 1);
	hist_add(&m->lat, lat_ns);
	hist_add(&m->lat_kind[k], lat_ns);
	metrics_add(&m->blocked_sum_ns, lat_ns);
}

static double ms_since(uint64_t t0, uint64_t t)
{
	return t0 && t && t >= t0 ? (double)(t - t0) / 1e6 : -1;
}

static void json_ms(FILE *f, const char *name, uint64_t t0, uint64_t t)
{
	double v = ms_since(t0, LD(&t));
	if (v < 0)
		fprintf(f, ",\"%s\":null", name);
	else
		fprintf(f, ",\"%s\":%.3f", name, v);
}

void metrics_session_json(const struct sess_metrics *m, FILE *f)
{
	uint64_t total = 0;
	for (int k = 0; k < FK_COUNT; k++)
		total += LD(&m->faults[k]);
	fprintf(f, "{\"id\":%d,\"pid\":%d,\"uid\":%u,\"state\":", m->id, (int)m->pid, (unsigned)m->uid);
	json_write_str(f, m->state);
	if (m->refused[0]) {
		fprintf(f, ",\"refused\":");
		json_write_str(f, m->refused);
	}
	fprintf(f, ",\"regions\":%llu,\"bytes\":%llu,\"page_size\":%llu", (unsigned long long)m->nregions,
		(unsigned long long)m->bytes_total, (unsigned long long)m->page_size_max);
	fprintf(f, ",\"faults\":{\"total\":%llu", (unsigned long long)total);
	for (int k = 0; k < FK_COUNT; k++)
		fprintf(f, ",\"%s\":%llu", kind_names[k], (unsigned long long)LD(&m->faults[k]));
	fprintf(f, "},\"deferred_eagain\":%llu", (unsigned long long)LD(&m->deferred));
	fprintf(f, ",\"latency\":");
	hist_json(&m->lat, f);
	for (int k = 0; k < FK_COUNT; k++) {
		if (!LD(&m->lat_kind[k].count))
			continue;
		fprintf(f, ",\"latency_%s\":", kind_names[k]);
		hist_json(&m->lat_kind[k], f);
	}
	fprintf(f, ",\"blocked_sum_ms\":%.3f,\"blocked_wall_ms\":%.3f", (double)LD(&m->blocked_sum_ns) / 1e6,
		(double)LD(&m->blocked_any_ns) / 1e6);
	fprintf(f, ",\"events\":{\"remove\":%llu,\"unmap\":%llu,\"remap\":%llu,\"fork\":%llu,\"removed_bytes\":%llu}",
		(unsigned long long)LD(&m->ev_remove), (unsigned long long)LD(&m->ev_unmap),
		(unsigned long long)LD(&m->ev_remap), (unsigned long long)LD(&m->ev_fork),
		(unsigned long long)LD(&m->removed_bytes));
	uint64_t pb = LD(&m->bytes_push), ps = LD(&m->t_push_start), pe = LD(&m->t_push_end);
	double psecs = ps && pe > ps ? (double)(pe - ps) / 1e9 : 0;
	fprintf(f,
		",\"installed\":{\"fault_bytes\":%llu,\"push_bytes\":%llu,\"zero_bytes\":%llu,\"poisoned_bytes\":%llu,"
		"\"done_bytes\":%llu,\"done_fraction\":%.4f}",
		(unsigned long long)LD(&m->bytes_fault), (unsigned long long)pb, (unsigned long long)LD(&m->bytes_zero),
		(unsigned long long)LD(&m->bytes_poisoned), (unsigned long long)LD(&m->bytes_done),
		m->bytes_total ? (double)LD(&m->bytes_done) / (double)m->bytes_total : 0.0);
	fprintf(f, ",\"pusher\":{\"bytes\":%llu,\"seconds\":%.3f,\"mib_per_s\":%.1f}", (unsigned long long)pb, psecs,
		psecs > 0 ? (double)pb / 1048576.0 / psecs : 0.0);
	fprintf(f, ",\"working_set\":{\"recorded_chunks\":%llu,\"prefetch_chunks\":%llu}",
		(unsigned long long)LD(&m->ws_recorded), (unsigned long long)LD(&m->ws_prefetch));
	uint64_t th = LD(&m->t_handshake);
	json_ms(f, "handshake_ms", LD(&m->t_accept), th);
	json_ms(f, "first_fault_ms", th, m->t_first_fault);
	json_ms(f, "complete_ms", th, m->t_complete);
	json_ms(f, "connected_ms", LD(&m->t_accept), m->t_end);
	fprintf(f, "}");
}

void metrics_fold(struct sess_metrics *t, const struct sess_metrics *m)
{
	for (int k = 0; k < FK_COUNT; k++) {
		metrics_add(&t->faults[k], LD(&m->faults[k]));
		hist_merge(&t->lat_kind[k], &m->lat_kind[k]);
	}
	hist_merge(&t->lat, &m->lat);
	metrics_add(&t->blocked_sum_ns, LD(&m->blocked_sum_ns));
	metrics_add(&t->blocked_any_ns, LD(&m->blocked_any_ns));
	metrics_add(&t->deferred, LD(&m->deferred));
	metrics_add(&t->ev_remove, LD(&m->ev_remove));
	metrics_add(&t->ev_unmap, LD(&m->ev_unmap));
	metrics_add(&t->ev_remap, LD(&m->ev_remap));
	metrics_add(&t->ev_fork, LD(&m->ev_fork));
	metrics_add(&t->removed_bytes, LD(&m->removed_bytes));
	metrics_add(&t->bytes_fault, LD(&m->bytes_fault));
	metrics_add(&t->bytes_push, LD(&m->bytes_push));
	metrics_add(&t->bytes_zero, LD(&m->bytes_zero));
	metrics_add(&t->bytes_poisoned, LD(&m->bytes_poisoned));
	metrics_add(&t->bytes_done, LD(&m->bytes_done));
	metrics_add(&t->bytes_total, m->bytes_total);
	metrics_add(&t->nregions, m->nregions);
}
