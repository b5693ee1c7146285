"""keras-egt: Explanation-Guided Training of early-exit CNNs, and their deployment to MCUs."""

from keras_egt import callbacks
from keras_egt import cascade
from keras_egt import costs
from keras_egt import datasets
from keras_egt import evaluation
from keras_egt import export
from keras_egt import layers
from keras_egt import losses
from keras_egt import metrics
from keras_egt import plots
from keras_egt import recipe
from keras_egt import stages
from keras_egt import tuning
from keras_egt.cascade import Cascade, calibrate_thresholds
from keras_egt.evaluation import evaluate
from keras_egt.layers import ConvBlock, ExitHead, SpatialAttention, spatial_softmax
from keras_egt.losses import attention_consistency, consistency_loss, exit_consistencies
from keras_egt.cnn import WIDTH_PRESETS, EarlyExitCNN
from keras_egt.model import EarlyExitModel
from keras_egt.stages import split_backbone, valid_cuts

__version__ = "0.1.0"
