/*
 * unwind — plain-C stack walker over ehtable slot images. See unwind.h for the contract.
 *
 * One frame (unw_step):
 *   1. push pc;
 *   2. find the mapping of pc (≤ 8 binary-search steps); none → one frame-pointer step (JIT);
 *   3. va = pc - bias, minus 1 for return addresses (the call may be the function's last
 *      instruction); bucket (va - first_va) >> 12, then ≤ 16 binary-search steps for the last
 *      row with row.pc <= va;
 *   4. apply the row: CFA from rsp/rbp (or the PLT formula), RA at CFA-8, rbp from CFA+off when
 *      saved; SIGNAL reloads rbp/rsp/rip from the sigcontext; STOP ends a complete walk; NONE
 *      (code without CFI) takes one frame-pointer step.
 * Frame-pointer step: needs a known bp at or above sp; reads saved bp at [bp] and RA at [bp+8];
 * a new bp that does not grow (or is not 0, the end of a chain) is marked unknown, so a loop of
 * bad pointers cannot recur while DWARF frames above it still unwind.
 */
#include "agent/unwind.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *unw_reason_name(unsigned reason)
{
	static const char *const names[UNW_REASON_COUNT] = {
	    "complete", "no-mapping", "no-row", "unsupported", "read-fail", "ra-zero", "max-frames",
	};

	return reason < UNW_REASON_COUNT ? names[reason] : "?";
}

const struct unw_mapping *unw_proc_find(const struct unw_proc *p, uint64_t pc)
{
	uint32_t lo = 0, hi = p->n < UNW_MAX_MAPPINGS ? p->n : UNW_MAX_MAPPINGS;

	for (int i = 0; i < UNW_MAPPING_STEPS && lo < hi; i++) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct unw_mapping *m = &p->maps[mid];

		if (pc < m->start)
			hi = mid;
		else if (pc >= m->end)
			lo = mid + 1;
		else
			return m;
	}
	return NULL;
}

int unw_proc_insert(struct unw_proc *p, const struct unw_mapping *m)
{
	struct unw_mapping out[UNW_MAX_MAPPINGS];
	uint32_t n = 0;
	int placed = 0;

	if (m->start >= m->end)
		return -EINVAL;
	for (uint32_t i = 0; i < p->n; i++) {
		struct unw_mapping o = p->maps[i];

		if (!placed && o.start >= m->start) {
			if (n == UNW_MAX_MAPPINGS)
				return -ENOSPC;
			out[n++] = *m;
			placed = 1;
		}
		if (o.end <= m->start || o.start >= m->end) {
			if (n == UNW_MAX_MAPPINGS)
				return -ENOSPC;
			out[n++] = o;
			continue;
		}
		/* Overlap: keep the parts outside m (the low part sorts before m). */
		if (o.start < m->start) {
			struct unw_mapping lo = o;

			lo.end = m->start;
			if (n == UNW_MAX_MAPPINGS)
				return -ENOSPC;
			out[n++] = lo;
		}
		if (o.end > m->end) {
			struct unw_mapping hi = o;

			hi.start = m->end;
			if (!placed) {
				if (n == UNW_MAX_MAPPINGS)
					return -ENOSPC;
				out[n++] = *m;
				placed = 1;
			}
			if (n == UNW_MAX_MAPPINGS)
				return -ENOSPC;
			out[n++] = hi;
		}
	}
	if (!placed) {
		if (n == UNW_MAX_MAPPINGS)
			return -ENOSPC;
		out[n++] = *m;
	}
	memcpy(p->maps, out, n * sizeof(out[0]));
	p->n = n;
	return 0;
}

int unw_arena_add(struct unw_arena *a, const uint64_t *slots, uint32_t n_slots, uint32_t *base)
{
	if (n_slots > UNW_ARENA_MAX_SLOTS - a->n_slots)
		return -ENOSPC;
	if (a->n_slots + n_slots > a->cap) {
		uint64_t cap = a->cap ? a->cap : 65536;
		uint64_t *p;

		while (cap < (uint64_t)a->n_slots + n_slots)
			cap *= 2;
		if (cap > UNW_ARENA_MAX_SLOTS)
			cap = UNW_ARENA_MAX_SLOTS;
		p = realloc(a->slots, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		a->slots = p;
		a->cap = (uint32_t)cap;
	}
	memcpy(a->slots + a->n_slots, slots, (size_t)n_slots * sizeof(*slots));
	*base = a->n_slots;
	a->n_slots += n_slots;
	return 0;
}

void unw_arena_free(struct unw_arena *a)
{
	free(a->slots);
	memset(a, 0, sizeof(*a));
}

/* Slot i of the arena, or -1 when out of range (BPF: a failed map lookup). */
static int unw_slot(const struct unw_arena *a, uint64_t i, uint64_t *v)
{
	if (i >= a->n_slots)
		return -1;
	*v = a->slots[i];
	return 0;
}

/* The row for va in the table at base; 0 found, -1 none (outside the table or before row 0). */
static int unw_find_row(const struct unw_arena *a, uint32_t base, uint64_t va, struct unw_row *row)
{
	struct unw_table_hdr hdr;
	struct unw_bucket bk;
	uint64_t w[2], idx, rows;
	uint32_t lo, hi;

	if (unw_slot(a, base, &w[0]) || unw_slot(a, (uint64_t)base + 1, &w[1]))
		return -1;
	memcpy(&hdr, w, sizeof(hdr));
	if (va < hdr.first_va)
		return -1;
	idx = (va - hdr.first_va) >> UNW_BUCKET_SHIFT;
	if (idx >= hdr.n_buckets || unw_slot(a, base + UNW_HDR_SLOTS + idx, &w[0]))
		return -1;
	memcpy(&bk, &w[0], sizeof(bk));
	rows = (uint64_t)base + UNW_HDR_SLOTS + hdr.n_buckets;
	lo = bk.first;
	hi = bk.end;
	if (lo >= hi || hi > hdr.n_rows || unw_slot(a, rows + lo, &w[0]))
		return -1;
	memcpy(row, &w[0], sizeof(*row));
	if (row->pc > va)
		return -1;
	for (int i = 0; i < UNW_ROW_STEPS && lo + 1 < hi; i++) {
		uint32_t mid = lo + (hi - lo) / 2;
		struct unw_row r;

		if (unw_slot(a, rows + mid, &w[0]))
			return -1;
		memcpy(&r, &w[0], sizeof(r));
		if (r.pc <= va) {
			lo = mid;
			*row = r;
		} else {
			hi = mid;
		}
	}
	return lo + 1 < hi ? -1 : 0; /* more than UNW_ROW_STEPS steps: a corrupt bucket */
}

/* One frame-pointer step; on failure the walk ends with reason `why`. Returns 1 when it ends. */
static int unw_fp_step(const struct unw_env *env, struct unw_state *st, uint32_t why)
{
	uint64_t nbp, ra;

	if (!st->bp_known || st->bp < st->sp) { /* bp == sp: a frame without locals */
		st->reason = why;
		return 1;
	}
	if (env->read(env->read_arg, st->bp, &nbp) || env->read(env->read_arg, st->bp + 8, &ra)) {
		st->reason = UNW_REASON_READ_FAIL;
		return 1;
	}
	if (ra == 0) {
		st->reason = UNW_REASON_RA_ZERO;
		return 1;
	}
	st->sp = st->bp + 16;
	/*
	 * A saved rbp that does not grow is no frame pointer (the caller has none, as in code
	 * calling assembly): the caller's frame is still found by DWARF from the new sp; only a
	 * later step that needs rbp fails. sp grows at every step, so the walk cannot loop.
	 */
	st->bp_known = nbp == 0 || nbp > st->bp;
	st->bp = nbp;
	st->pc = ra;
	st->exact = 0;
	return 0;
}

int unw_step(const struct unw_env *env, struct unw_state *st)
{
	const struct unw_mapping *m;
	struct unw_row row;
	uint64_t va, cfa, ra, base;

	if (st->out->n >= UNW_MAX_FRAMES) { /* the bound BPF's verifier needs, too */
		st->reason = UNW_REASON_MAX_FRAMES;
		return 1;
	}
	st->out->ips[st->out->n++] = st->pc;

	m = unw_proc_find(env->proc, st->pc);
	if (!m)
		return unw_fp_step(env, st, UNW_REASON_NO_MAPPING);
	if (m->flags & UNW_MAP_NO_TABLE)
		return unw_fp_step(env, st, UNW_REASON_NO_ROW);
	if (m->flags & UNW_MAP_FP) {
		/* A saved rbp of 0 marks the outermost frame (Go's goexit, like glibc's _start);
		 * only the leaf, which may keep no frame, takes its row. */
		if (st->out->n > 1 && st->bp_known && st->bp == 0) {
			st->reason = UNW_REASON_COMPLETE;
			return 1;
		}
		if (st->out->n > 1)
			return unw_fp_step(env, st, UNW_REASON_NO_ROW);
	}
	va = st->pc - m->bias - (st->exact ? 0 : 1);
	if (unw_find_row(env->arena, m->table_base, va, &row) != 0)
		row.kind = UNW_KIND_NONE;

	switch (row.kind) {
	case UNW_KIND_NONE:
		return unw_fp_step(env, st, UNW_REASON_NO_ROW);
	case UNW_KIND_STOP:
		st->reason = UNW_REASON_COMPLETE;
		return 1;
	case UNW_KIND_SIGNAL: {
		uint64_t rbp, rsp, rip;

		base = st->sp + UNW_SIGFRAME_OFFSET;
		if (env->read(env->read_arg, base + UNW_SIGCTX_RBP * 8, &rbp) ||
		    env->read(env->read_arg, base + UNW_SIGCTX_RSP * 8, &rsp) ||
		    env->read(env->read_arg, base + UNW_SIGCTX_RIP * 8, &rip)) {
			st->reason = UNW_REASON_READ_FAIL;
			return 1;
		}
		if (rip == 0) {
			st->reason = UNW_REASON_RA_ZERO;
			return 1;
		}
		st->pc = rip;
		st->sp = rsp;
		st->bp = rbp;
		st->bp_known = 1;
		st->exact = 1; /* the interrupted instruction itself, not a return address */
		return 0;
	}
	case UNW_KIND_RSP:
		cfa = st->sp + (int64_t)row.cfa * 8;
		break;
	case UNW_KIND_RBP:
		if (!st->bp_known) {
			st->reason = UNW_REASON_UNSUPPORTED;
			return 1;
		}
		cfa = st->bp + (int64_t)row.cfa * 8;
		break;
	case UNW_KIND_PLT:
		cfa = st->sp + 8 + ((st->pc & 15) >= (uint64_t)row.cfa ? 8 : 0);
		break;
	default:
		st->reason = UNW_REASON_UNSUPPORTED;
		return 1;
	}

	if (env->read(env->read_arg, cfa - 8, &ra)) {
		st->reason = UNW_REASON_READ_FAIL;
		return 1;
	}
	if (row.rbp == UNW_RBP_UNKNOWN) {
		st->bp_known = 0;
	} else if (row.rbp != 0) {
		/*
		 * Epilogue rows may still name a slot below sp after `pop %rbp`; an unreadable
		 * slot loses rbp, not the walk (only a later rbp-based frame needs it).
		 */
		st->bp_known = env->read(env->read_arg, cfa + (int64_t)row.rbp * 8, &st->bp) == 0;
	}
	if (ra == 0) {
		st->reason = UNW_REASON_RA_ZERO;
		return 1;
	}
	st->pc = ra;
	st->sp = cfa;
	st->exact = 0;
	return 0;
}

int unw_walk(const struct unw_env *env, const struct unw_regs *regs, struct unw_stack *out)
{
	struct unw_state st = {
	    .pc = regs->ip,
	    .sp = regs->sp,
	    .bp = regs->bp,
	    .bp_known = 1,
	    .exact = 1,
	    .reason = UNW_REASON_MAX_FRAMES,
	    .out = out,
	};

	out->n = 0;
	for (int i = 0; i < UNW_MAX_FRAMES; i++)
		if (unw_step(env, &st))
			break;
	out->reason = st.reason;
	return (int)out->n;
}
