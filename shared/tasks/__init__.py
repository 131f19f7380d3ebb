"""What each family trains on and how it is evaluated: a Task per family (the contract is
shared/engine/protocols.py: Task), and the random batches of the same shapes that the
bench, the batch finder and the memory calibration use."""


def random_batch(config, batch_size: int, rng):
    """One micro-batch of random data shaped as the config's family trains on: what the bench
    times, the batch-size finder probes and the memory calibration measures."""
    from shared.registry import get_family

    return get_family(config.family).random_batch(config, batch_size, rng)
