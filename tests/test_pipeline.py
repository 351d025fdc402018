"""The pipeline's ToMe schedules: a function of the timestep choosing each step's ToMeConfig."""
import numpy as np

import weights
from minitome import ToMeConfig
from minitome.pipeline import generate


def test_schedules(tiny_pipeline):
    _, folder = tiny_pipeline
    sd = weights.load(folder)
    cfg = ToMeConfig(ratio=0.5, seed=3)
    run = dict(prompt="a cat", steps=10, seed=5, width=32, height=32)
    seen = []

    def image(tome):
        return np.asarray(generate(sd, tome=tome, **run)[0])

    def spy(t):
        seen.append(t)
        return cfg

    constant, plain = image(cfg), image(None)
    assert np.array_equal(image(spy), constant)              # a schedule that always says cfg is cfg
    assert seen == [901, 801] + list(range(801, 0, -100))    # asked at every UNet call (PLMS: S + 1)
    assert np.array_equal(image(lambda t: None), plain)      # one that never merges is plain SD
    early = image(lambda t: cfg if t > 500 else None)        # merging only on the noisy steps
    assert not np.array_equal(early, constant) and not np.array_equal(early, plain)
