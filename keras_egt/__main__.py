import sys

from keras_egt.cli import main

sys.exit(main())
