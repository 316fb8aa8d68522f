"""PyTorch reference for charlab's char-LSTM: the same model, data, batching and optimizer, so
tokens/s and validation loss can be compared side by side (scripts/bench.sh runs both).

Reads a prepared corpus directory (charlab's cache: data/prepared/<key>/ with clean.txt and
vocab.json, the `corpus.key` of a run's run.json) so both train on identical ids.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn


class CharRnn(nn.Module):
    def __init__(self, vocab, embed, hidden, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        y, state = self.lstm(self.embed(x), state)
        return self.head(self.drop(y)), state


def streams(ids, batch, seq):
    n = len(ids) // batch
    data = torch.tensor(ids[: n * batch], dtype=torch.long).view(batch, n)
    return data, (n - 1) // seq


def evaluate(model, val, val_windows, seq, vocab, loss_fn):
    """Mean loss over the whole validation split, state carried from zero (as charlab)."""
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        vs = None
        for k in range(val_windows):
            x = val[:, k * seq:(k + 1) * seq]
            y = val[:, k * seq + 1:(k + 1) * seq + 1]
            logits, vs = model(x, vs)
            total += loss_fn(logits.reshape(-1, vocab), y.reshape(-1)).item() * y.numel()
            n += y.numel()
    model.train()
    return total / n


def torch_name(name):
    """charlab's parameter name as this module's (model::torch_name in charlab)."""
    fixed = {"Embedding/weight": "embed.weight", "Logits/weight": "head.weight",
             "Logits/bias": "head.bias"}
    if name in fixed:
        return fixed[name]
    if name.startswith("LSTM/layer_"):
        k, param = name[len("LSTM/layer_"):].split("/")
        return f"lstm.{param}_l{k}"
    return None


def load_charlab(model, path):
    from safetensors.torch import load_file
    tensors = load_file(path)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            target = torch_name(name)
            if target in own:
                own[target].copy_(t)


def parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="charlab prepared dir (clean.txt, vocab.json)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuDNN's LSTM)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="steps run before the clock starts (on a GPU: cuDNN's plan choice and "
                         "the allocator's first growth are not a step's cost)")
    ap.add_argument("--eval-at", default="", help="comma-separated steps to evaluate at too")
    ap.add_argument("--init", help="start from a charlab checkpoint's weights (safetensors): "
                    "the same initial state, to tell the init's draw from the training")
    ap.add_argument("--autocast", action="store_true",
                    help="bf16 autocast around the forward, as an expert turns it on "
                         "(oneDNN's bf16 LSTM and linear; weights and Adam stay fp32)")
    return ap


def train(a, on_eval=None):
    """One run as `a` (parser()'s arguments) asks; returns its figures (scripts/race_optuna.py
    calls it in-process, as an Optuna objective would). `on_eval(step, val_loss)` is called at
    each `--eval-at` step; when it returns True the run stops there (pruned)."""
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    chars = json.load(open(f"{a.data}/vocab.json", encoding="utf-8"))["chars"]
    index = {c: i for i, c in enumerate(chars)}
    text = open(f"{a.data}/clean.txt", encoding="utf-8").read()
    ids = [index[c] for c in text]
    n_val = round(len(ids) * a.val_fraction)
    train, windows = streams(ids[: len(ids) - n_val], a.batch, a.seq)
    val_batch = max(1, min(a.batch, n_val // (a.seq + 1)))
    val, val_windows = streams(ids[len(ids) - n_val:], val_batch, a.seq)

    train, val = train.to(dev), val.to(dev)
    model = CharRnn(len(chars), a.embed, a.hidden, a.layers, a.dropout).to(dev)
    if a.init:
        load_charlab(model, a.init)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    loss_fn = nn.CrossEntropyLoss()
    state, w = None, 0
    first = None
    eval_at = {int(s) for s in a.eval_at.split(",") if s}
    evals, eval_secs = {}, 0.0
    t0 = time.perf_counter()
    for step in range(a.steps):
        if step == a.warmup and a.warmup > 0:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0, eval_secs = time.perf_counter(), 0.0
        x = train[:, w * a.seq:(w + 1) * a.seq]
        y = train[:, w * a.seq + 1:(w + 1) * a.seq + 1]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.autocast):
            logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = loss_fn(logits.float().reshape(-1, len(chars)), y.reshape(-1))
        if first is None:
            first = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        w += 1
        if w >= windows:
            w, state = 0, None
        if step + 1 in eval_at:
            e0 = time.perf_counter()
            evals[step + 1] = evaluate(model, val, val_windows, a.seq, len(chars), loss_fn)
            eval_secs += time.perf_counter() - e0
            if on_eval is not None and on_eval(step + 1, evals[step + 1]):
                return {"pruned": True, "steps": step + 1, "val_loss": evals[step + 1],
                        "evals": evals}
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_secs = time.perf_counter() - t0 - eval_secs

    val_loss = evaluate(model, val, val_windows, a.seq, len(chars), loss_fn)
    return {
        "impl": f"pytorch {torch.__version__}" + (" cuDNN" if dev.type == "cuda" else "")
        + (" autocast-bf16" if a.autocast else ""),
        "steps": a.steps,
        "first_loss": first,
        "ln_vocab": math.log(len(chars)),
        "val_loss": val_loss,
        "evals": evals,
        "tokens_per_s": (a.steps - a.warmup) * a.batch * a.seq / train_secs,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
        "train_secs": train_secs,
    }


def main():
    print(json.dumps(train(parser().parse_args())))


if __name__ == "__main__":
    main()
