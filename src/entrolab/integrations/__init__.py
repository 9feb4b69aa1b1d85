"""entrolab's methods inside other engines: ``entrolab.integrations.trl`` (TRL's GRPOTrainer) and
``entrolab.integrations.verl`` (verl's policy-loss and advantage registries, and an entrolab trainer).

Neither adapter holds loss logic: both build a :class:`~entrolab.batch.TokenBatch` from the engine's tensors and
call ``entrolab.update`` (filters, minibatch statistics, the composer), the same functions the built-in trainer
calls. ``choice.resolve_methods`` turns a preset name or an axis mapping into the methods a run uses.
"""
