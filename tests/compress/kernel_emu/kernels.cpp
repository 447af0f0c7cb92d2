// All kernels in one translation unit, as NVRTC compiles them (edgeft/compress/kernels/_runtime.py).
#include "aft.cu"
#include "pts.cu"
