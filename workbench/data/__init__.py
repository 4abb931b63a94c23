"""Dataset builders that return ready data plus their ground truth where one exists.

- :func:`make_synthetic`: tasks with a planted relationship between their true weight vectors;
- :func:`make_multidigits`: two digits on one canvas (scikit-learn's 8 × 8 digits), MultiMNIST-style
  (``labels_removed``: a share of each task's training labels missing; :func:`multidigits_image_folder`: read from image files);
- :func:`make_lexicon`: English words with human valence ratings and frequencies, as MiniLM tokens
  (:func:`make_lexicon_per_task`: each rating on all the words its own source covers, a dataset per task);
- :class:`StreamedData`: a problem's samples streamed from a ``torch`` ``Dataset`` (or ``DataLoader``), batch by batch;
- :class:`TaskDatasets`: one dataset per task, combined into batches by a sampling policy (:func:`task_datasets` makes one from raw sources);
- :func:`image_folder_data`: a folder of images and their labels table, streamed from disk (:func:`write_image_folder` writes one);
- :func:`table_data`: a table's rows (a Hugging Face ``datasets.Dataset``, or any sequence of mappings), streamed.
"""

from workbench.data.image_folder import ImageFolder, image_folder_data, write_image_folder
from workbench.data.lexicon import LEXICON_TASK_SETS, LEXICON_TASKS, make_lexicon, make_lexicon_per_task
from workbench.data.multidigits import MULTIDIGITS_TASKS, make_multidigits, multidigits_image_folder
from workbench.data.per_task import TaskDatasets, task_datasets
from workbench.data.streamed import StreamedData
from workbench.data.table import TableRows, table_data
from workbench.data.synthetic import SyntheticTasks, block_similarity, make_synthetic
from workbench.data.tabular import make_tabular

__all__ = [
    "ImageFolder",
    "LEXICON_TASKS",
    "LEXICON_TASK_SETS",
    "MULTIDIGITS_TASKS",
    "StreamedData",
    "SyntheticTasks",
    "TableRows",
    "TaskDatasets",
    "block_similarity",
    "image_folder_data",
    "make_lexicon",
    "make_lexicon_per_task",
    "make_multidigits",
    "make_synthetic",
    "make_tabular",
    "multidigits_image_folder",
    "table_data",
    "task_datasets",
    "write_image_folder",
]
