"""Base classes find their family without importing it: what `subclasses_in` sees and leaves out."""

from __future__ import annotations

from worker.pipelines import DiffusionPipeline, StableDiffusionImg2ImgPipeline
from worker.pipelines.pipeline_utils import pipeline_class
from worker.runtime.subclasses import subclasses_in
from worker.schedulers import SCHEDULER_CLASSES, EulerDiscreteScheduler, SchedulerMixin
from worker.schedulers.base import kiln_schedulers


def test_subclasses_at_any_depth_from_the_package_only():
    class Outsider(StableDiffusionImg2ImgPipeline):  # defined here, in tests: not Kiln's
        pass

    found = subclasses_in(DiffusionPipeline, "worker.pipelines")
    assert found["StableDiffusionImg2ImgPipeline"] is StableDiffusionImg2ImgPipeline  # a grandchild
    assert "Outsider" not in found and "DiffusionPipeline" not in found


def test_a_users_class_never_shadows_kilns():
    class EulerDiscreteScheduler(SchedulerMixin):  # noqa: F811 - same name on purpose
        pass

    assert kiln_schedulers()["EulerDiscreteScheduler"] is SCHEDULER_CLASSES["EulerDiscreteScheduler"]
    assert pipeline_class("StableDiffusionImg2ImgPipeline") is StableDiffusionImg2ImgPipeline


def test_every_registered_scheduler_is_in_the_family():
    family = kiln_schedulers()
    assert all(family[name] is cls for name, cls in SCHEDULER_CLASSES.items())
    assert EulerDiscreteScheduler in EulerDiscreteScheduler().compatibles
