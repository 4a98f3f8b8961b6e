"""Does an average of the weights train a better model? A run trained as `vhred train` trains it, with
exponential moving averages (EMA) of its weights validated beside it (docs/configs.md)

    python -m eval.ema_weights --config configs/dailydialog-cpu.yaml data=dailydialog name=dailydialog-cpu-ema

The run itself is the command's (same seed, same weights: its best.pt is the plain run's). After
every optimiser step each EMA, torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn(d),
takes the new weights; at every validation each is validated on the same batches, its figures
appended to RUN/ema.jsonl and its best weights saved as RUN/ema<d>.pt (a best.pt-like checkpoint
that --checkpoint reads). Not resumable: a stopped run starts its averages afresh.
"""
import json
import os
import sys
import time

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vhred import train
from vhred.metrics.likelihood import elbo_metrics

DECAYS = (0.995, 0.999)   # averages over about 200 steps (a KL cycle) and about 1,000 (2.4 epochs)


def with_averages(run_class):
    """A trainer that keeps EMAs of its weights and validates them at each validation."""
    class Averaged(run_class):
        def train_step(self, *args, **kwargs):
            out = super().train_step(*args, **kwargs)
            if not hasattr(self, "emas"):
                self.emas = {d: AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(d)) for d in DECAYS}
                self.ema_best = dict.fromkeys(DECAYS, float("inf"))
            for ema in self.emas.values():
                ema.update_parameters(self.model)
            return out

        def validate(self):
            m = super().validate()
            for d, ema in getattr(self, "emas", {}).items():
                t0 = time.time()
                em = elbo_metrics(ema.module, self.val_data, self.cfg.batch_size, self.cfg.eval_batches, self.cfg.seed)
                row = {"decay": d, "step": self.progress.step, "secs": round(time.time() - t0, 1),
                       **{k: v for k, v in em.items() if isinstance(v, (int, float))}}
                with open(os.path.join(self.dir, "ema.jsonl"), "a") as f:
                    f.write(json.dumps(row) + "\n")
                self.log(f"  EMA {d}: ELBO/token {em['elbo_per_token']:.3f}, KL/utt {em['kl_per_utt']:.2f} "
                         f"(the weights themselves: {m['elbo_per_token']:.3f})")
                if em["elbo_per_token"] < self.ema_best[d]:
                    self.ema_best[d] = em["elbo_per_token"]
                    plain, self.model = self.model, ema.module   # save() writes self.model's weights
                    try:
                        self.save(f"ema{d}.pt", resumable=False)
                    finally:
                        self.model = plain
            return m
    return Averaged


if __name__ == "__main__":
    train.Run = with_averages(train.Run)   # train.train() builds the run from this name
    train.main(sys.argv[1:])
