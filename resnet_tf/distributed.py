"""Data-parallel training on TensorFlow's own engine, ``tf.distribute.MultiWorkerMirroredStrategy``.

The engine: every worker process runs a gRPC server on its own port and joins the others through
TensorFlow's coordination service (led by worker 0); the strategy mirrors every variable on the
worker's one device and all-reduces tensors with TensorFlow's collective ops (a ring over gRPC on
CPUs, NCCL between GPUs).

How a job is described: ``TF_CONFIG``, TensorFlow's own variable, the same JSON on every worker
but for the task's index::

    TF_CONFIG='{"cluster": {"worker": ["host0:port0", "host1:port1"]}, "task": {"type": "worker", "index": 0}}'

The rank is the task's index, the world size the number of workers listed; each worker listens
on its own address of the list and reaches every other's (``resnet-fmnist train --workers N`` sets
this over loopback, with free ports). Creating the strategy waits, without a time limit, until
every worker has come up. Faults: when a worker dies, the others' next all-reduce fails at once
(``UnavailableError``: its connections close); one that hangs is declared dead by the coordination
service after 10 s without heartbeats, which aborts the others' collectives.

TensorFlow's rule: the strategy configures TensorFlow's runtime, so it must be created before
anything else in the process runs a TensorFlow op or creates a tensor (importing TensorFlow,
Keras and this package is fine; building a network, a tensor or a ``Trainer`` first is not).
:func:`initialize` (which :class:`DistributedTrainer` calls) raises a one-line error when that
is too late; a user script creates its ``DistributedTrainer`` (or calls :func:`initialize`)
before any other TensorFlow work.

What a step does (:func:`common.oracle.sharded_sgd_step`): ``strategy.run`` runs the worker's
step on its own shard: the local train-mode forward and backward pass (BatchNorm with the shard's
statistics, its running statistics updated locally), then, explicitly in the replica context,
``all_reduce(MEAN)`` of the gradients and of the updated running statistics, the recipe's update
of the mean gradients (:meth:`Trainer.update`, as in one process: weight decay, the momentum's
rescaling, Keras' SGD at its schedule's rate), and ``all_reduce(SUM)`` of the shard's summed
loss and number correct. Keras' SGD computes the update (its ``update_step`` per variable, then
its ``iterations``), but not through ``optimizer.apply``: under a strategy that all-reduces the
gradients once more by SUM (keras-team/keras #19891); and Keras 3's ``fit`` is broken under this
strategy (keras-team/keras #20585). The local pass is compiled by XLA or run by TensorFlow's
graph executor, whichever :mod:`common.autotune` measures faster (on the local step alone,
without collectives); the all-reduces stay outside XLA.

The collectives of every worker must match: each worker traces the same training steps in the
same order (the training loop does; equal shards give equal shapes). Evaluation, export and
import are local.
"""
from __future__ import annotations

import json
import os
from typing import Tuple

import keras
import tensorflow as tf

from . import kernels
from .launch import ENGINE  # noqa: F401  (the contract's: this module's too)
from .train import Trainer, _correct

__all__ = ["ENGINE", "initialize", "DistributedTrainer", "shutdown"]

ENGINE_GPU = "tf.distribute.MultiWorkerMirroredStrategy (NCCL)"


_job = {}  # "strategy", "rank", "world_size", "engine", "device" once joined


def _task() -> Tuple[int, int]:
    """(rank, world size) from ``TF_CONFIG``; a one-line RuntimeError naming what is missing."""
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        raise RuntimeError("TF_CONFIG is not set: it describes the job (see resnet_tf.distributed)")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        workers = list(cluster["worker"])
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError('TF_CONFIG must be {"cluster": {"worker": ["host:port", ...]}, '
                           '"task": {"type": "worker", "index": i}}') from None
    if set(cluster) - {"worker"} or kind != "worker":
        raise RuntimeError(f"TF_CONFIG: only 'worker' tasks are supported, got cluster {sorted(cluster)} and "
                           f"task type {kind!r}")
    if not 0 <= index < len(workers):
        raise RuntimeError(f"TF_CONFIG: task index {index} is not one of the {len(workers)} workers")
    return index, len(workers)


def _local_device(device) -> str:
    """"/GPU:i" or "/CPU:0" for ``device`` (as :meth:`Trainer.resolve_device` reads it), without
    running a TensorFlow op."""
    if device is None:
        return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    return Trainer.resolve_device(device)


def initialize(device=None) -> Tuple[int, int]:
    """Join the job ``TF_CONFIG`` describes: create the process's
    ``MultiWorkerMirroredStrategy`` (which waits for every worker) on ``device`` (None: GPU 0
    if TensorFlow sees one, else the CPU; "gpu:i" makes GPU i the only one TensorFlow uses).
    Returns (rank, world_size); a second call returns the same. Raises a one-line RuntimeError
    when ``TF_CONFIG`` is missing or incomplete, or when TensorFlow already ran an op."""
    if _job.get("strategy") is not None:
        return _job["rank"], _job["world_size"]
    if _job.get("left"):
        raise RuntimeError("this process already left its job: TensorFlow joins one job per process")
    rank, world_size = _task()
    from tensorflow.python.eager import context  # no public way to ask whether the runtime started
    if context.context()._context_handle is not None:
        raise RuntimeError("the TensorFlow runtime already started in this process: create the DistributedTrainer "
                           "(or call resnet_tf.distributed.initialize()) before any other TensorFlow op")
    local = _local_device(device)
    if local.startswith("/GPU"):
        gpus = tf.config.list_physical_devices("GPU")
        index = int(local.split(":")[1])
        if index >= len(gpus):
            raise RuntimeError(f"device {device!r}: TensorFlow sees {len(gpus)} GPUs")
        tf.config.set_visible_devices([gpus[index]], "GPU")  # one replica per worker
        implementation = tf.distribute.experimental.CommunicationImplementation.NCCL
    else:
        tf.config.set_visible_devices([], "GPU")
        implementation = tf.distribute.experimental.CommunicationImplementation.RING
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(), communication_options=options)
    if strategy.num_replicas_in_sync != world_size:
        raise RuntimeError(f"MultiWorkerMirroredStrategy has {strategy.num_replicas_in_sync} replicas for "
                           f"{world_size} workers: one device per worker is needed")
    _job.update(strategy=strategy, rank=rank, world_size=world_size, device="/GPU:0" if local.startswith("/GPU")
                else "/CPU:0", engine=ENGINE_GPU if local.startswith("/GPU") else ENGINE)
    return rank, world_size


class DistributedTrainer(Trainer):
    """:class:`resnet_tf.Trainer` as one worker of the job ``TF_CONFIG`` describes (constructed
    with the same keywords; it calls :func:`initialize` itself, so it must come before any other
    TensorFlow op). The network, built here under the strategy's scope, has mirrored variables;
    a network passed in must be a function that builds it (the chapter's way), not a built one.
    ``train_step(x, y)`` takes this worker's shard and returns the loss summed over the global
    batch and its number correct (see the module's docstring).

    Attributes: ``rank``, ``world_size``, ``engine`` (:data:`ENGINE`) and ``strategy``.
    """

    def __init__(self, net=None, *, device=None, **kwargs):
        self.rank, self.world_size = initialize(device)
        self.engine = _job["engine"]
        self.strategy = _job["strategy"]
        if isinstance(net, keras.layers.Layer) and net.weights:
            raise ValueError("DistributedTrainer builds its network under the strategy's scope: pass a function "
                             "that builds it (or None), not a built network")
        with self.strategy.scope():
            super().__init__(net, device=_job["device"], **kwargs)
        self._measuring = False

    # --- one step -------------------------------------------------------------------------------

    def _statistics(self):
        """BatchNorm's running statistics (the network's float state that is not trained)."""
        return [v for v in self.net.non_trainable_variables if "float" in str(v.dtype)]

    def _local_pass(self, x, y):
        """The worker's own train-mode pass: (summed loss, correct, gradients, running statistics
        as updated from the shard)."""
        variables = self.net.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.net(x, training=True)
            losses = self.loss(logits, y)
            loss = tf.reduce_mean(losses)
        gradients = tape.gradient(loss, variables)
        return tf.reduce_sum(losses), _correct(logits, y), gradients, [tf.identity(v.value) for v in self._statistics()]

    def _apply(self, gradients, variables) -> None:
        """Keras' SGD step on gradients already averaged over the workers: its ``update_step`` on
        each variable at the schedule's rate, then its step counter (``apply`` would all-reduce
        them once more, see the module's docstring)."""
        lr = self.optimizer.learning_rate
        for gradient, variable in zip(gradients, variables):
            self.optimizer.update_step(gradient, variable, lr)
        self.optimizer.iterations.assign_add(1)

    def _replica_step(self, local, tracing, x, y):
        """One worker's step in the strategy's replica context (a thread of the strategy's own)."""
        with kernels.tracing(*tracing):  # thread-local: the step's tracing state, set again in this thread
            loss_sum, correct, gradients, updated = local(x, y)
        context = tf.distribute.get_replica_context()
        variables = self.net.trainable_variables
        if self._measuring:  # autotuning: the local step alone, no collectives
            self.update(gradients, variables)
            return loss_sum, correct
        statistics = self._statistics()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, list(gradients) + updated)
        self.update(means[:len(variables)], variables)
        for variable, value in zip(statistics, means[len(variables):]):
            variable.assign(value)
        loss_sum, correct = context.all_reduce(tf.distribute.ReduceOp.SUM, [loss_sum, correct])
        return loss_sum, correct

    def _function(self, compiler, training):
        if not training:
            return super()._function(compiler, training)  # evaluation: local, as Trainer's
        key = (compiler, "measure" if self._measuring else "train")
        if key not in self._compiled:
            if (compiler, "local") not in self._compiled:  # shared by the measured step and the real one
                self._compiled[compiler, "local"] = tf.function(self._local_pass, jit_compile=compiler == "xla",
                                                                reduce_retracing=True)
            local = self._compiled[compiler, "local"]

            def step(x, y):
                tracing = kernels._tracing.state  # (compiler, batch) as Trainer._step set them
                results = self.strategy.run(self._replica_step, args=(local, tracing, x, y))
                return [self.strategy.experimental_local_results(value)[0] for value in results]
            self._compiled[key] = tf.function(step, reduce_retracing=True)  # collectives: never under XLA
        return self._compiled[key]

    def _choose_compiler(self, x, y, training):
        # Measured on the local step (no collectives): the workers' choices need not agree, and a
        # measurement that ran collectives a number of times of its own would leave them unmatched.
        self._measuring = training
        try:
            return super()._choose_compiler(x, y, training)
        finally:
            self._measuring = False


def shutdown() -> None:
    """Leave the job: stop the strategy's health checks and forget it (TensorFlow cannot leave a
    job while the process lives; its runtime ends with the process). Safe to call twice or
    without a job."""
    strategy = _job.pop("strategy", None)
    if strategy is not None:
        _job.clear()
        _job["left"] = True
        stop = getattr(strategy.extended, "_stop_check_health_thread", None)
        if stop is not None:
            stop()

