"""One Optuna worker of scripts/race.py: joins a study in a journal file (several workers share
it, as Optuna's docs run a distributed study) and runs trials of the PyTorch char-LSTM
(scripts/torch_ref.py's train, in-process, as a researcher's objective would) until the study is
done. Prints one JSON line per finished trial: its parameters, val loss, finish time, number
(the order Optuna proposed it in) and the steps it trained.
"""
import argparse
import json
import time

import warnings

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import torch_ref


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--journal", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--space", required=True, help="JSON: the race's search space")
    ap.add_argument("--sampler", choices=["grid", "tpe"], required=True)
    ap.add_argument("--trials", type=int, required=True, help="the study's total")
    ap.add_argument("--startup", type=int, default=8, help="TPE's random trials")
    ap.add_argument("--fixed", required=True, help="torch_ref.py arguments every trial shares")
    ap.add_argument("--seed", type=int, default=None, help="the sampler's seed")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds: start no trial after this (Optuna's own time budget)")
    ap.add_argument("--prune", action="store_true",
                    help="Optuna's HyperbandPruner on the val loss at each --eval-at step")
    ap.add_argument("--seed-per-trial", type=int, default=None, metavar="BASE",
                    help="each trial trains from seed BASE + its number (charlab's "
                         "seed_per_trial), not --fixed's one seed")
    a = ap.parse_args()
    # nn.LSTM warns that dropout needs two layers; the model's output dropout still applies.
    warnings.filterwarnings("ignore", message="dropout option adds dropout")
    space = json.loads(a.space)
    if a.sampler == "grid":
        sampler = optuna.samplers.GridSampler(space["grid"], seed=1)
    else:
        sampler = optuna.samplers.TPESampler(n_startup_trials=a.startup, seed=a.seed)
    pruner = optuna.pruners.HyperbandPruner() if a.prune else optuna.pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(a.journal))
    study = optuna.create_study(study_name=a.study, storage=storage, sampler=sampler,
                                pruner=pruner, load_if_exists=True)

    def objective(trial):
        if a.sampler == "grid":
            params = {k: trial.suggest_categorical(k, v) for k, v in space["grid"].items()}
        else:
            params = {}
            for k, (kind, lo, hi) in space["random"].items():
                if kind == "log_uniform":
                    params[k] = trial.suggest_float(k, lo, hi, log=True)
                elif kind == "uniform":
                    params[k] = trial.suggest_float(k, lo, hi)
                else:
                    params[k] = trial.suggest_categorical(k, lo)
        args = a.fixed.split() + [f"--{k}={v}" for k, v in params.items()]
        if a.seed_per_trial is not None:
            args.append(f"--seed={a.seed_per_trial + trial.number}")
        evals = sorted(int(s) for s in torch_ref.parser().parse_args(args).eval_at.split(",") if s)

        def on_eval(step, loss):
            trial.report(loss, evals.index(step) + 1)
            return trial.should_prune()

        r = torch_ref.train(torch_ref.parser().parse_args(args), on_eval if a.prune else None)
        print(json.dumps({"params": params, "val_loss": r["val_loss"], "end": time.time(),
                          "completed": not r.get("pruned", False), "number": trial.number,
                          "steps": r["steps"]}), flush=True)
        if r.get("pruned"):
            raise optuna.TrialPruned()
        return r["val_loss"]

    callbacks = [optuna.study.MaxTrialsCallback(a.trials, states=None)]
    study.optimize(objective, n_trials=a.trials, callbacks=callbacks, timeout=a.timeout)


if __name__ == "__main__":
    main()
