"""Continual-learning worker (``streamrl learn``).

- ``config``: every hyperparameter (:class:`~streamrl.learner.config.LearnerConfig`), copied into snapshots;
- ``vocab``, ``replay``, ``sumtree``: item table and the tensor-backed replay buffer;
- ``model``, ``dqn``: the Q-network and its one update function (Double DQN + SQN head);
- ``evaluate``, ``drift``, ``checkpoint``: the publish gate, ADWIN drift, atomic checkpoints;
- ``worker``: the loop; ``policy``: a snapshot rebuilt for serving.
"""
