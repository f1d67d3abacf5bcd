"""integerize: the integers of one layer, and the weights taken over from another batch."""

from __future__ import annotations

import numpy as np

from qexport.frontend.capture import capture
from qexport.frontend.demo import demo_model
from qexport.frontend.inputs import load_demo
from qexport.frontend.models.vgg import BUILTIN
from qexport.ir.integerize import integerize


def test_a_second_batch_takes_the_weights_over_and_makes_the_same_integers() -> None:
    model = demo_model(BUILTIN["VGG16_quant_gradual"])
    images = load_demo("0:4").images
    first = {t.name: integerize(t) for t in capture(model, images[:2])}
    for t in capture(model, images[2:]):
        fresh, reused = integerize(t), integerize(t, first[t.name])
        assert reused.w_int is first[t.name].w_int and reused.w_float is first[t.name].w_float
        np.testing.assert_array_equal(reused.w_int, fresh.w_int)
        np.testing.assert_array_equal(reused.x_int, fresh.x_int)
        assert not np.array_equal(reused.x_int, first[t.name].x_int)  # the batch's own inputs
    # another layer's integers are never taken for this one's weights
    a, b = (integerize(t) for t in capture(model, images[:1])[:2])
    t_b = capture(model, images[:1])[1]
    assert integerize(t_b, a).w_int.shape == b.w_int.shape != a.w_int.shape
