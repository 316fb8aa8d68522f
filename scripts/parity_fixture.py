"""Writes tests/fixtures/pytorch_parity.json: what PyTorch's own char-rnn (nn.Embedding → nn.LSTM →
nn.Linear, cross-entropy, clip_grad_norm_, Adam) computes for a tiny model, so CI can check that
charlab's model and training step are PyTorch's without PyTorch installed (tests/parity.rs).

The fixture holds the initial weights (PyTorch's own draw, by PyTorch's parameter names), a
carried-in state, the loss of one window, every gradient and the state after it; then three
training steps over consecutive windows (state carried and detached, gradients clipped by global
norm, Adam) with each step's loss and gradient norm, and the weights and state at the end.

    .venv-torch/bin/python scripts/parity_fixture.py   # (scripts/bench.sh makes .venv-torch)

Dimensions are chosen to reach the kernels' edge cases: a hidden size that is not a multiple of
16 (padding), ids that do not all occur (the per-window table), three batch rows (thread groups
of unequal size), two layers, and a clip threshold small enough to be active.
"""
import json
import pathlib

import torch
import torch.nn as nn

VOCAB, EMBED, HIDDEN, LAYERS = 11, 5, 7, 2
BATCH, SEQ, STEPS = 3, 6, 3
LR, CLIP = 0.01, 0.1


class CharRnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, x, state):
        y, state = self.lstm(self.embed(x), state)
        return self.head(y), state


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def state_json(state):
    h, c = state
    return {"h": [flat(h[k]) for k in range(LAYERS)], "c": [flat(c[k]) for k in range(LAYERS)]}


def window(gen):
    # Ids 0..VOCAB-2 only: the last id never occurs, so its embedding row gets no gradient.
    x = torch.randint(0, VOCAB - 1, (BATCH, SEQ), generator=gen)
    y = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    return x, y


def main():
    torch.manual_seed(20261201)
    gen = torch.Generator().manual_seed(7)
    model = CharRnn()
    params = {n: flat(p) for n, p in model.named_parameters()}
    state = (
        torch.rand(LAYERS, BATCH, HIDDEN, generator=gen) - 0.5,
        torch.rand(LAYERS, BATCH, HIDDEN, generator=gen) - 0.5,
    )
    start = state_json(state)
    loss_fn = nn.CrossEntropyLoss()

    # One window: loss, every gradient, the state after it.
    x, y = window(gen)
    logits, after = model(x, state)
    loss = loss_fn(logits.reshape(-1, VOCAB), y.reshape(-1))
    loss.backward()
    one = {
        "x": flat(x),
        "y": flat(y),
        "loss": float(loss.detach()),
        "grads": {n: flat(p.grad) for n, p in model.named_parameters()},
        "state_after": state_json(after),
    }

    # Training steps from the same weights and state, on new windows.
    model.zero_grad()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps = []
    for _ in range(STEPS):
        x, y = window(gen)
        opt.zero_grad()
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = loss_fn(logits.reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        norm = nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        steps.append({"x": flat(x), "y": flat(y), "loss": float(loss.detach()), "grad_norm": float(norm)})

    fixture = {
        "torch_version": torch.__version__,
        "dims": {"vocab": VOCAB, "embed": EMBED, "hidden": HIDDEN, "layers": LAYERS},
        "batch": BATCH,
        "seq": SEQ,
        "params": params,
        "state": start,
        "window": one,
        "train": {
            "lr": LR,
            "clip": CLIP,
            "betas": list(opt.defaults["betas"]),
            "eps": opt.defaults["eps"],
            "steps": steps,
            "params_after": {n: flat(p) for n, p in model.named_parameters()},
            "state_after": state_json(state),
        },
    }
    out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/pytorch_parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
