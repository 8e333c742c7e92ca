"""Scanning cell C for functions, and rewriting BCC diagnostics to cell lines."""

import ctypes as ct

import pytest

from workbench.notebook.cellsource import (
    choose_function,
    find_functions,
    first_error_line,
    rewrite_compiler_output,
    verifier_excerpt,
    verifier_reason,
)
from workbench.notebook.mapview import _sum, decode

SOURCE = """\
#include <uapi/linux/if_ether.h>
#define HELPER(x) { return x; }
BPF_ARRAY(counts, u64, 1);   // int fake(struct xdp_md *c) {
/* static int commented(struct __sk_buff *s) { } */
static __always_inline int helper(struct xdp_md *ctx) {
    if (ctx) { return 1; }
    return 0;
}

int
xdp_main(struct xdp_md *ctx)
{
    char *s = "int strfake(struct xdp_md *x) {";
    return helper(ctx) ? XDP_PASS : XDP_DROP;
}

int on_egress(struct __sk_buff *skb) { return 0; }
TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }
RAW_TRACEPOINT_PROBE(sched_switch) { return 0; }
int conn(struct bpf_sock_addr *ctx) { return 1; }
int any_ctx(void *ctx) { return 0; }
"""


def test_find_functions_skips_comments_strings_macros_and_bodies():
    fns = find_functions(SOURCE)
    assert [(f.name, f.line, f.static, f.kinds) for f in fns] == [
        ("helper", 5, True, ("xdp",)),
        ("xdp_main", 11, False, ("xdp",)),
        ("on_egress", 17, False, ("tc", "cgroup_skb")),
        ("tracepoint__sock__inet_sock_set_state", 18, False, ("tracepoint",)),
        ("raw_tracepoint__sched_switch", 19, False, ("raw_tracepoint",)),
        ("conn", 20, False, ("connect4",)),
        ("any_ctx", 21, False, ()),
    ]
    assert fns[3].tracepoint == "sock:inet_sock_set_state" and fns[4].tracepoint == "sched_switch"


def test_choose_function_by_name_else_first_non_static():
    fns = find_functions(SOURCE)
    assert choose_function(fns).name == "xdp_main"
    assert choose_function(fns, "on_egress").name == "on_egress"
    assert choose_function(fns, "a_program_name").name == "xdp_main"   # --name only names the program
    with pytest.raises(LookupError, match="no non-static function"):
        choose_function(find_functions("static int f(void *c) { return 0; }"))


CLANG = """\
/virtual/main.c:6:23: error: use of undeclared identifier 'undefined_thing'
    return XDP_PASS + undefined_thing;
                      ^
/virtual/main.c:20:5: warning: unused variable 'x'
    int x;
    ^
1 error generated.
"""
CELL = "\n".join(["// c"] * 5 + ["    return XDP_PASS + undefined_thing;", "", "", "    int x;"])


def test_compiler_output_names_cell_lines_even_when_bcc_shifted_them():
    text = rewrite_compiler_output(CLANG, CELL)
    assert text.splitlines()[0] == "cell line 6, col 23: error: use of undeclared identifier 'undefined_thing'"
    # Line 20 of BCC's rewritten source quotes "int x;", which is cell line 9.
    assert "cell line 9, col 5: warning" in text and "/virtual" not in text
    assert first_error_line(CLANG, CELL) == 6
    assert first_error_line("1 error generated.", CELL) is None


VERIFIER = """\
bpf: Failed to load program: Permission denied
0: R1=ctx() R10=fp0
; unsigned char *data = (void *)(long)ctx->data; @ main.c:15
0: (61) r1 = *(u32 *)(r1 +0)          ; R1=pkt(r=0)
; return data[100] == 1 ? XDP_DROP : XDP_PASS; @ main.c:16
1: (71) r1 = *(u8 *)(r1 +100)
invalid access to packet, off=100 size=1, R1(id=0,off=100,r=0)
R1 offset is outside of the packet
processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""


def test_verifier_excerpt_and_reason():
    cell = "int f(struct xdp_md *ctx) {\n    unsigned char *data = (void *)(long)ctx->data;\n" \
           "    return data[100] == 1 ? XDP_DROP : XDP_PASS;\n}\n"
    excerpt = verifier_excerpt(VERIFIER, cell)
    assert "; return data[100] == 1 ? XDP_DROP : XDP_PASS;  (cell line 3)" in excerpt
    assert "(cell line 2)" in excerpt and "main.c:16" not in excerpt and "bpf: Failed" not in excerpt
    assert verifier_reason(VERIFIER) == "R1 offset is outside of the packet"


class Pair(ct.Structure):
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64)]


class Flow(ct.Structure):
    _fields_ = [("saddr", ct.c_uint32), ("comm", ct.c_char * 8), ("stats", Pair)]


def test_decode_ints_structs_nested_and_char_arrays():
    assert decode(ct.c_uint64(7), "value") == {"value": 7}
    flow = Flow(0x0100007F, b"curl", Pair(3, 180))
    assert decode(flow) == {"saddr": 0x0100007F, "comm": "curl", "stats.packets": 3, "stats.bytes": 180}


def test_percpu_values_sum_elementwise():
    assert _sum([1, 2, 3]) == 6
    total = _sum([Pair(1, 10), Pair(2, 20)])
    assert (total.packets, total.bytes) == (3, 30)
