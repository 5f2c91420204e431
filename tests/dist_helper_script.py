"""Run under torchrun by tests/test_distributed.py: exercises utils/distributed.py for real."""

import json
import sys

import torch

from utils import distributed as du


def main(out_path, dataset_len):
    layout = du.init_distributed("cpu")
    rank, world = layout["rank"], layout["world_size"]
    total = du.all_reduce_sum(torch.tensor([float(rank + 1)], dtype=torch.float64))
    sampler = du.ShardSampler(dataset_len)
    counts = torch.zeros(dataset_len, dtype=torch.float64)
    for index in sampler:
        counts[index] += 1
    du.all_reduce_sum(counts)
    gathered = du.all_gather_objects({"rank": rank, "indices": list(sampler)})
    seed = du.seed_everything(7)
    seeds = du.all_gather_objects(seed)
    print("only rank 0 prints this")
    if du.is_main_process():
        with open(out_path, "w") as handle:
            json.dump(
                {
                    "world": world,
                    "backend": torch.distributed.get_backend(),
                    "sum": total.item(),
                    "counts": counts.tolist(),
                    "gathered": gathered,
                    "seeds": seeds,
                },
                handle,
            )
    du.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
