/*
 * unwind.h — the layout of DWARF unwind tables and process mapping lists, shared by the BPF
 * walker and user space (design/dwarf-unwinding.md §2.2–2.4).
 *
 * A table is an array of 8-byte slots, stored for BPF in one global ARRAY map:
 *   UNW_HDR_SLOTS header slots   struct unw_table_hdr
 *   n_buckets index slots        struct unw_bucket, one per 4 KiB of code from first_va
 *   n_rows row slots             struct unw_row, sorted by pc; a row holds until the next one
 * A process is a sorted list of at most UNW_MAX_MAPPINGS executable mappings; a mapping points
 * at its table by the table's first slot. va = pc - bias is the ELF virtual address.
 *
 * Only fixed-width kernel types: this header is included by BPF C (after vmlinux.h, which
 * defines __u32 and friends) and by user space (through <linux/types.h>).
 */
#ifndef EMBER_BPF_UNWIND_H
#define EMBER_BPF_UNWIND_H

#if !defined(__bpf__) && !defined(__BPF__)
#include <linux/types.h>
#endif

#define UNW_MAX_FRAMES 127     /* frames per walk (one bpf_loop) */
#define UNW_MAX_MAPPINGS 128   /* executable mappings per process */
#define UNW_MAPPING_STEPS 8    /* binary search steps over the mappings: 2^8 > 128 */
#define UNW_BUCKET_SHIFT 12    /* one index slot per 4 KiB of code */
#define UNW_ROW_STEPS 16       /* binary search steps inside one bucket (≤ 4097 rows) */
#define UNW_HDR_SLOTS 2	       /* struct unw_table_hdr is two slots */
#define UNW_RBP_UNKNOWN (-128) /* unw_row.rbp: rbp saved by a rule we do not encode */
#define UNW_SIGFRAME_OFFSET 40 /* sigcontext of an rt_sigframe, from the handler's sp */
#define UNW_SIGCTX_RBP 10      /* words of struct sigcontext */
#define UNW_SIGCTX_RSP 15
#define UNW_SIGCTX_RIP 16

/* What a row says about the frame at its pc. */
enum unw_kind {
	UNW_KIND_NONE = 0, /* no FDE covers this pc: take one frame-pointer step */
	UNW_KIND_RSP,	   /* CFA = rsp + cfa*8, RA at CFA-8 */
	UNW_KIND_RBP,	   /* CFA = rbp + cfa*8, RA at CFA-8 */
	UNW_KIND_PLT,	   /* CFA = rsp + 8 + ((pc & 15) >= cfa ? 8 : 0), RA at CFA-8 */
	UNW_KIND_SIGNAL,   /* signal trampoline: registers from the sigcontext at sp+40 */
	UNW_KIND_STOP,	   /* RA undefined: outermost frame (_start, clone3), walk complete */
	UNW_KIND_UNSUP,	   /* a rule the walker cannot apply: walk stops */
	UNW_KIND_COUNT
};

/* Why a walk ended; the BPF side counts these per CPU as unwind-quality telemetry. */
enum unw_reason {
	UNW_REASON_COMPLETE = 0, /* reached a STOP row (entry point or clone3) */
	UNW_REASON_NO_MAPPING,	 /* pc in no mapping, and no frame-pointer step possible */
	UNW_REASON_NO_ROW,	 /* no table or FDE for pc, and no frame-pointer step possible */
	UNW_REASON_UNSUPPORTED,	 /* UNSUP row, or the rule needs an rbp we lost */
	UNW_REASON_READ_FAIL,	 /* reading the user stack failed */
	UNW_REASON_RA_ZERO,	 /* return address 0 */
	UNW_REASON_MAX_FRAMES,	 /* UNW_MAX_FRAMES frames and more to go */
	UNW_REASON_COUNT
};

struct unw_row {
	__u32 pc;  /* ELF virtual address where the rule starts */
	__u8 kind; /* enum unw_kind */
	__s8 rbp;  /* caller's rbp at CFA + rbp*8; 0 = unchanged; UNW_RBP_UNKNOWN */
	__s16 cfa; /* CFA offset / 8; for PLT the threshold T */
};

struct unw_bucket {
	__u32 first; /* index of the row covering the bucket's first byte (0 if none does) */
	__u32 end;   /* one past the last row starting inside the bucket */
};

struct unw_table_hdr {
	__u32 first_va;	 /* va of bucket 0, 4 KiB aligned */
	__u32 n_buckets; /* index slots that follow the header */
	__u32 n_rows;	 /* row slots that follow the index */
	__u32 flags;	 /* UNW_TABLE_* */
};

/* unw_table_hdr.flags */
#define UNW_TABLE_FP (1u << 0) /* the object keeps frame pointers (Go): its mappings get UNW_MAP_FP */

/* unw_mapping.flags; the high 16 bits hold the object id (UNW_MAP_OBJ_SHIFT), 0 = none */
#define UNW_MAP_FP (1u << 0) /* object keeps frame pointers (Go): frame-pointer steps, but the
				* leaf takes its row (it may keep no frame); rbp 0 ends the walk */
#define UNW_MAP_NO_TABLE (1u << 1) /* table not (yet) available */
#define UNW_MAP_OBJ_SHIFT 16

/*
 * A frame of a DWARF walk inside a mapping with a table is stored process-independent:
 * UNW_FRAME_ENCODED | obj_id << UNW_FRAME_OBJ_SHIFT | va, va = pc - bias, the ELF virtual address
 * the object's symbol tables use (tables keep va in 32 bits). Any other frame (JIT, anonymous
 * code, an object without a table) keeps its raw address, whose bit 63 is clear (user space).
 */
#define UNW_FRAME_ENCODED (1ull << 63)
#define UNW_FRAME_OBJ_SHIFT 40
#define UNW_FRAME_OBJ_MASK 0xffffull
#define UNW_FRAME_VA_MASK ((1ull << UNW_FRAME_OBJ_SHIFT) - 1)

struct unw_mapping {
	__u64 start, end; /* [start, end) in the process */
	__u64 bias;	  /* va = pc - bias */
	__u32 table_base; /* first slot of the table in the slot array */
	__u32 flags;	  /* UNW_MAP_* */
};

struct unw_proc {
	__u32 n; /* mappings in use, sorted by start, non-overlapping */
	__u32 reserved;
	/* Unique per list written (a 64-bit counter of the writer, never 0): a list's contents
	 * never change under one gen, so BPF may cache what it looked up in it by (gen, pc). */
	__u64 gen;
	struct unw_mapping maps[UNW_MAX_MAPPINGS];
};

/* Events the BPF side sends user space through the unw_events ring buffer. */
enum unw_event_type {
	UNW_EVENT_EXEC = 1,    /* the process exec'ed: read its mappings now */
	UNW_EVENT_EXIT = 2,    /* the process (thread group leader) exited */
	UNW_EVENT_UNKNOWN = 3, /* a sample found no mapping list, or a pc outside it (dlopen) */
};

struct unw_event {
	__u32 type; /* enum unw_event_type */
	__u32 pid;  /* tgid */
	__u64 pc;   /* UNW_EVENT_UNKNOWN: the pc that had no mapping */
};

#endif
