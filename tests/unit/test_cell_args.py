"""The `%%ebpf` cell line: every type's options, and each mistake as one line."""

import pytest

from workbench.errors import ValidationError
from workbench.notebook.cellargs import parse_cell_line


def test_xdp_on_a_device_in_a_netns_with_cflags_and_pin():
    spec = parse_cell_line("xdp --mode native --dev veth0 --netns wb-x -D PORT=80 -D DEBUG=1 --pin --name counter")
    assert (spec.kind, spec.mode, spec.dev, spec.netns, spec.name, spec.pin) == (
        "xdp", "native", "veth0", "wb-x", "counter", True)
    assert spec.cflags == ["-DPORT=80", "-DDEBUG=1"]


def test_cgroup_is_the_skb_hook():
    assert parse_cell_line("cgroup --direction egress --pod xwing").kind == "cgroup_skb"


def test_defaults():
    spec = parse_cell_line("xdp --pod deathstar")
    assert (spec.mode, spec.name, spec.cflags, spec.pin, spec.lxc) == ("skb", "", [], False, False)


@pytest.mark.parametrize("line", [
    "tc --direction ingress --pod xwing --lxc",
    "tc --direction egress --dev eth0 --netns wb-a",
    "cgroup_skb --direction egress --pod xwing --lab demo",
    "cgroup_skb --direction ingress --cgroup wb/t1",
    "connect4 --pod xwing",
    "tracepoint sock:inet_sock_set_state",
    "tracepoint",
    "raw_tracepoint sched_switch",
])
def test_valid_lines(line):
    assert parse_cell_line(line).kind == line.split()[0]


@pytest.mark.parametrize("line, message", [
    ("", "give the program type"),
    ("kprobe --dev x", "invalid choice: 'kprobe'"),
    ("xdp --dev x --netns wb-a --frobnicate", "unrecognized arguments: --frobnicate"),
    ("tc --dev x --netns wb-a", "tc: needs --direction ingress|egress"),
    ("cgroup_skb --pod p", "cgroup_skb: needs --direction"),
    ("xdp --direction ingress --dev x --netns wb-a", "--direction applies to tc and cgroup_skb only"),
    ("tc --direction sideways --dev x", "invalid choice: 'sideways'"),
    ("tc --mode native --direction ingress --dev x", "--mode applies to xdp only"),
    ("xdp", "give exactly one target"),
    ("xdp --dev x --pod p", "give exactly one target"),
    ("xdp --cgroup wb/x", "--cgroup applies to cgroup_skb and connect4"),
    ("connect4 --dev eth0", "attaches to a cgroup; use --cgroup PATH or --pod P"),
    ("xdp --pod p --netns wb-a", "--netns goes with --dev"),
    ("cgroup_skb --direction egress --pod p --lxc", "--lxc goes with --pod for xdp and tc"),
    ("tracepoint sock:inet_sock_set_state --dev eth0", "takes no target"),
    ("tracepoint sock", "is not CATEGORY:EVENT"),
    ("raw_tracepoint a:b", "is not an event name"),
    ("tracepoint sock:inet_sock_set_state --pin", "a tracepoint ends with its kernel"),
    ("xdp sock:x --dev e --netns wb-a", "unexpected argument 'sock:x'"),
    ("xdp --dev e --netns wb-a -D 1BAD=2", "NAME a C identifier"),
    ("xdp --dev e --netns wb-a --name 'two words'", "use letters, digits and _"),
    ("xdp --dev 'unterminated", "cannot parse the options"),
    ("xdp --help", "%%ebpf"),
])
def test_mistakes_are_one_line(line, message):
    with pytest.raises(ValidationError) as err:
        parse_cell_line(line)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
