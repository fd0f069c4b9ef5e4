"""Tests for :mod:`sk_mann.model`: the MANN and the paper's baselines.

Every network must give the same logits through ``forward`` (whole episodes)
and through ``step`` (streaming), let gradients reach every parameter, keep the
episodes of a batch independent and start each ``forward`` from a wiped memory.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from numpy.testing import assert_allclose

from sk_mann import memory as mem
from sk_mann.model import (
    MANN,
    FeedForwardBaseline,
    LSTMBaseline,
    MANNState,
    build_network,
)

N_IN, N_LAB, N_OUT = 5, 4, 4
BATCH, T = 3, 7
SMALL = dict(controller_size=8, n_slots=6, slot_size=3, n_reads=2)

MANN_CONFIGS = [
    dict(controller=c, read_feedback=rf, write_content=wc, read_after_write=raw)
    for c, rf, wc, raw in itertools.product(
        ["lstm", "ff"], [True, False], ["key", "add"], [True, False]
    )
] + [  # the key-strength extension
    dict(controller="lstm", write_content="add", key_strength=True),
    dict(
        controller="ff", read_feedback=False, read_after_write=False, key_strength=True
    ),
]


def config_id(cfg):
    return "-".join(f"{k}={v}" for k, v in cfg.items())


def make_mann(cfg, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return MANN(N_IN, N_LAB, N_OUT, **SMALL, **cfg).to(dtype)


def make_baseline(kind, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cls = {"lstm": LSTMBaseline, "ff": FeedForwardBaseline}[kind]
    return cls(N_IN, N_LAB, N_OUT, hidden_size=8).to(dtype)


NETWORKS = [pytest.param(("mann", c), id=config_id(c)) for c in MANN_CONFIGS] + [
    pytest.param(("lstm", None), id="LSTMBaseline"),
    pytest.param(("ff", None), id="FeedForwardBaseline"),
]


def make_net(spec, dtype=torch.float64, seed=0):
    kind, cfg = spec
    return (
        make_mann(cfg, dtype, seed)
        if kind == "mann"
        else make_baseline(kind, dtype, seed)
    )


def episodes(dtype=torch.float64, seed=1, batch=BATCH, steps=T):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, steps, N_IN, generator=g, dtype=dtype)
    codes = torch.randint(0, N_LAB, (batch, steps), generator=g)
    label_in = torch.zeros(batch, steps, N_LAB, dtype=dtype)
    label_in[:, 1:] = torch.nn.functional.one_hot(codes[:, :-1], N_LAB).to(dtype)
    return x, label_in


def run_steps(net, x, label_in):
    state = net.initial_state(x.shape[0])
    outs = []
    for t in range(x.shape[1]):
        logits, state = net.step(torch.cat([x[:, t], label_in[:, t]], dim=-1), state)
        outs.append(logits)
    return torch.stack(outs, dim=1), state


# ---------------------------------------------------------------------------
# Shapes.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", NETWORKS)
def test_forward_shape(spec):
    net = make_net(spec)
    x, label_in = episodes()
    out = net(x, label_in)
    assert out.shape == (BATCH, T, N_OUT)
    assert out.dtype == torch.float64


@pytest.mark.parametrize("spec", NETWORKS)
def test_step_shape(spec):
    net = make_net(spec)
    state = net.initial_state(BATCH)
    logits, state = net.step(
        torch.rand(BATCH, N_IN + N_LAB, dtype=torch.float64), state
    )
    assert logits.shape == (BATCH, N_OUT)


@pytest.mark.parametrize("cfg", MANN_CONFIGS, ids=config_id)
def test_mann_state_shapes(cfg):
    net = make_mann(cfg)
    state = net.initial_state(BATCH)
    for s in (
        state,
        net.step(torch.rand(BATCH, N_IN + N_LAB, dtype=torch.float64), state)[1],
    ):
        assert isinstance(s, MANNState)
        assert s.h.shape == (BATCH, 8)
        assert s.c.shape == (BATCH, 8)
        assert s.reads.shape == (BATCH, 2 * 3)
        assert isinstance(s.memory, mem.MemoryState)
        assert s.memory.memory.shape == (BATCH, 6, 3)
        assert s.memory.usage.shape == (BATCH, 6)
        assert s.memory.read_weights.shape == (BATCH, 2, 6)
        assert s.memory.least_used.shape == (BATCH, 6)


def test_mann_initial_state_values():
    net = make_mann(MANN_CONFIGS[0])
    s = net.initial_state(2)
    assert torch.all(s.h == 0) and torch.all(s.c == 0) and torch.all(s.reads == 0)
    ref = mem.initial_state(2, 6, 3, 2, dtype=torch.float64)
    for got, want in zip(s.memory, ref):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "controller, read_feedback, in_features",
    [("lstm", True, 8 + 6), ("lstm", False, 8), ("ff", True, 6), ("ff", False, None)],
)
def test_recurrent_input_size(controller, read_feedback, in_features):
    net = MANN(
        N_IN, N_LAB, N_OUT, controller=controller, read_feedback=read_feedback, **SMALL
    )
    if in_features is None:
        assert net.recurrent_proj is None
    else:
        assert net.recurrent_proj.in_features == in_features
    assert net.output.in_features == 8 + 2 * 3  # o_t = [h_t ; r_t]


@pytest.mark.parametrize(
    "write_content, key_strength, n_head",
    [
        ("key", False, 2 * 3 + 2),
        ("add", False, 2 * 3 * 2 + 2),
        ("key", True, 2 * 3 + 2 + 2),
        ("add", True, 2 * 3 * 2 + 2 + 2),
    ],
)
def test_head_size(write_content, key_strength, n_head):
    net = MANN(
        N_IN,
        N_LAB,
        N_OUT,
        write_content=write_content,
        key_strength=key_strength,
        **SMALL,
    )
    assert net.head.out_features == n_head


@pytest.mark.parametrize("write_content", ["key", "add"])
def test_key_strength_starts_as_the_papers_read(write_content):
    """Strength weights zero: beta = softplus(bias) = 1 (to float32 rounding:
    the bias is set before the cast to float64), the paper's network."""
    cfg = dict(write_content=write_content)
    paper = make_mann(cfg)
    strong = make_mann({**cfg, "key_strength": True})
    with torch.no_grad():
        strong.head.weight[-2:].zero_()
        state = {
            k: (v[:-2] if k.startswith("head.") else v)
            for k, v in strong.state_dict().items()
        }
    paper.load_state_dict(state)
    x, label_in = episodes()
    assert_allclose(
        strong(x, label_in).detach().numpy(),
        paper(x, label_in).detach().numpy(),
        rtol=1e-8,
        atol=1e-10,
    )
    # A larger strength changes the reads (the option is not a no-op).
    with torch.no_grad():
        strong.head.bias[-2:].fill_(5.0)
    assert not torch.allclose(strong(x, label_in), paper(x, label_in))


def test_mann_defaults_are_the_papers():
    net = MANN(N_IN, N_LAB, N_OUT)
    assert (net.controller, net.controller_size) == ("lstm", 200)
    assert (net.n_slots, net.slot_size, net.n_reads) == (128, 40, 4)
    assert net.write_content == "key" and net.read_feedback
    assert not net.key_strength
    assert net.output.in_features == 200 + 4 * 40


@pytest.mark.parametrize(
    "kwargs", [dict(controller="gru"), dict(write_content="erase")]
)
def test_mann_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        MANN(N_IN, N_LAB, N_OUT, **kwargs)


# ---------------------------------------------------------------------------
# Values: streaming and batched paths agree, episodes are independent.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", NETWORKS)
def test_forward_equals_stepping(spec):
    net = make_net(spec)
    x, label_in = episodes()
    batched = net(x, label_in)
    streamed, _ = run_steps(net, x, label_in)
    assert_allclose(
        streamed.detach().numpy(), batched.detach().numpy(), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("spec", NETWORKS)
def test_forward_equals_stepping_float32(spec):
    net = make_net(spec, dtype=torch.float32)
    x, label_in = episodes(dtype=torch.float32)
    batched = net(x, label_in)
    streamed, _ = run_steps(net, x, label_in)
    assert_allclose(
        streamed.detach().numpy(), batched.detach().numpy(), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("spec", NETWORKS)
def test_episodes_in_a_batch_are_independent(spec):
    net = make_net(spec)
    x, label_in = episodes()
    out = net(x, label_in).detach()
    x2, label_in2 = x.clone(), label_in.clone()
    x2[1:] = torch.rand_like(x2[1:]) * 5.0
    label_in2[1:] = label_in2[1:].flip(-1)
    out2 = net(x2, label_in2).detach()
    assert_allclose(out2[0].numpy(), out[0].numpy(), rtol=1e-12, atol=1e-13)
    assert not torch.allclose(out2[1:], out[1:])
    alone = net(x[:1], label_in[:1]).detach()
    assert_allclose(alone[0].numpy(), out[0].numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("spec", NETWORKS)
def test_forward_starts_from_a_wiped_memory(spec):
    net = make_net(spec)
    x, label_in = episodes()
    first = net(x, label_in).detach()
    net(*episodes(seed=5))  # an unrelated episode in between
    second = net(x, label_in).detach()
    assert torch.equal(first, second)


@pytest.mark.parametrize("spec", NETWORKS)
def test_outputs_depend_on_earlier_steps_only_for_recurrent_nets(spec):
    """Changing x at t=2 changes later logits iff the network has memory."""
    kind, _ = spec
    net = make_net(spec)
    x, label_in = episodes()
    out = net(x, label_in).detach()
    x2 = x.clone()
    x2[:, 2] += 1.0
    out2 = net(x2, label_in).detach()
    assert torch.equal(out2[:, :2], out[:, :2])  # causal: the past is unchanged
    assert not torch.allclose(out2[:, 2], out[:, 2])
    later_changed = not torch.allclose(out2[:, 3:], out[:, 3:])
    assert later_changed == (kind != "ff")


@pytest.mark.parametrize("controller", ["lstm", "ff"])
@pytest.mark.parametrize("read_feedback", [True, False])
def test_read_feedback_controls_dependence_on_previous_reads(controller, read_feedback):
    cfg = dict(controller=controller, read_feedback=read_feedback)
    net = make_mann(cfg)
    state = net.initial_state(BATCH)
    inputs = torch.rand(BATCH, N_IN + N_LAB, dtype=torch.float64)
    with torch.no_grad():
        _, state = net.step(inputs, state)
        base, base_state = net.step(inputs, state)
        moved = state._replace(reads=state.reads + 1.0)
        other, other_state = net.step(inputs, moved)
    if read_feedback:
        assert not torch.allclose(other, base)
        assert not torch.allclose(other_state.h, base_state.h)
    else:
        assert torch.equal(other, base)
        assert torch.equal(other_state.h, base_state.h)


def test_ff_controller_has_no_recurrence_through_h():
    net = make_mann(dict(controller="ff", read_feedback=False))
    state = net.initial_state(BATCH)
    inputs = torch.rand(BATCH, N_IN + N_LAB, dtype=torch.float64)
    with torch.no_grad():
        _, state = net.step(inputs, state)
        base, _ = net.step(inputs, state)
        other, _ = net.step(inputs, state._replace(h=state.h + 1.0, c=state.c + 1.0))
    assert torch.equal(other, base)


@pytest.mark.parametrize("cfg", MANN_CONFIGS, ids=config_id)
def test_mann_memory_is_used(cfg):
    """The output at t depends on the memory contents (through the reads)."""
    net = make_mann(cfg)
    state = net.initial_state(BATCH)
    inputs = torch.rand(BATCH, N_IN + N_LAB, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            _, state = net.step(inputs, state)
        base, _ = net.step(inputs, state)
        M = state.memory.memory
        moved = state._replace(
            memory=state.memory._replace(memory=M + torch.rand_like(M))
        )
        other, _ = net.step(inputs, moved)
    assert not torch.allclose(other, base)


def test_lstm_forget_gate_bias_is_one():
    net = MANN(N_IN, N_LAB, N_OUT, **SMALL)
    bias = net.input_proj.bias.detach()
    assert torch.all(bias[8:16] == 1.0)


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", NETWORKS)
def test_gradients_reach_every_parameter(spec):
    net = make_net(spec)
    x, label_in = episodes()
    targets = torch.randint(
        0, N_OUT, (BATCH, T), generator=torch.Generator().manual_seed(3)
    )
    logits = net(x, label_in)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, N_OUT), targets.reshape(-1)
    )
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cfg", MANN_CONFIGS, ids=config_id)
def test_gradient_reaches_early_inputs_through_memory(cfg):
    """The loss at the last step has a gradient w.r.t. the first input."""
    net = make_mann(cfg)
    x, label_in = episodes()
    x.requires_grad_()
    net(x, label_in)[:, -1].sum().backward()
    assert x.grad[:, 0].abs().sum() > 0


# ---------------------------------------------------------------------------
# build_network.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, cls, kwargs",
    [
        ("mann", MANN, SMALL),
        ("lstm", LSTMBaseline, dict(hidden_size=8)),
        ("ff", FeedForwardBaseline, dict(hidden_size=8)),
    ],
)
def test_build_network(kind, cls, kwargs):
    net = build_network(kind, N_IN, N_LAB, N_OUT, **kwargs)
    assert type(net) is cls
    x, label_in = episodes(dtype=torch.float32)
    assert net(x, label_in).shape == (BATCH, T, N_OUT)


@pytest.mark.parametrize("kind", ["MANN", "ntm", "", "gru"])
def test_build_network_rejects_unknown_names(kind):
    with pytest.raises(ValueError, match="unknown"):
        build_network(kind, N_IN, N_LAB, N_OUT)
