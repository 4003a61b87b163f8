"""pacs-ai: the command line and the demo that put the node, workers and models together."""

import os

# NumPy asks the kernel for transparent huge pages for every array of 4 MB and more; where
# the kernel then compacts memory to find them (transparent_hugepage/defrag "madvise", a
# common default), touching a new CT-sized array stalled a worker for 1-3 s now and then
# (reading, postprocessing and writing the LIDC CT: 3.1-5.5 s instead of 1.6 s). NumPy
# reads this when it is first imported, which the commands do after this; set it to 1 to
# have huge pages anyway.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
