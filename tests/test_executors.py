"""The executor interface (engine.executors.base): every stage method is abstract, so an executor that misses one
fails when it is created, not half-way through a job when a stage first calls the missing method."""

import pytest

from imprint.engine.executors import Executor, LocalExecutor, check_executor

STAGES = {"embed", "embed_files", "build_index", "knn", "ssim_pairs", "mse_pairs", "extract_features"}


def test_every_stage_method_is_abstract():
    assert Executor.__abstractmethods__ == STAGES
    with pytest.raises(TypeError, match="abstract"):
        Executor()


def test_incomplete_executor_cannot_be_instantiated_and_says_what_is_missing():
    class Incomplete(Executor):  # the usual way: a class body that forgets one stage
        name = "incomplete"

        def embed(self, *a, **k): ...
        def embed_files(self, *a, **k): ...
        def build_index(self, *a, **k): ...
        def knn(self, *a, **k): ...
        def ssim_pairs(self, *a, **k): ...
        def mse_pairs(self, *a, **k): ...

    with pytest.raises(TypeError, match="extract_features"):
        Incomplete()

    class NoPairs(Incomplete):  # a subclass that deletes two stages again is caught too
        ssim_pairs = Executor.ssim_pairs
        mse_pairs = Executor.mse_pairs

        def extract_features(self, *a, **k): ...

    with pytest.raises(TypeError) as e:
        NoPairs()
    assert "mse_pairs" in str(e.value) and "ssim_pairs" in str(e.value)

    class Complete(Incomplete):
        def extract_features(self, *a, **k):
            return "features"

    ex = Complete()
    assert ex.extract_features() == "features" and check_executor(ex) == "incomplete"
    with ex as entered:  # the base class's lifecycle still comes with it
        assert entered is ex


def test_shipped_executors_implement_every_stage():
    assert not LocalExecutor.__abstractmethods__
    LocalExecutor()
    from imprint.engine.executors.ray import RayExecutor  # the class only: no cluster is started

    assert not RayExecutor.__abstractmethods__
