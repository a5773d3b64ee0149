import torch

pytest_plugins = [
    "tests.fixtures.redisserver",
    "tests.fixtures.s3server",
    "tests.fixtures.stack",
]

# Tiny test models are dominated by thread hand-off costs: one thread is ~10x faster on 2 cores,
# and keeps float summation order identical to the worker processes the e2e tests start.
torch.set_num_threads(1)
