"""The parts of the training CLI (``main.py``): its flags (``flags``), the run folder and merged config
(``run_config``) and the Lightning logger, callbacks and learning rate of a run (``trainer_setup``).

``main.run`` puts them together; every name stays importable from ``main`` too. Nothing here imports Lightning at
module level, so ``import main`` stays light."""
