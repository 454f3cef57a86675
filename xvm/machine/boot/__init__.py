"""Kernel loaders: each turns a kernel file into guest memory contents and a BootPlan."""
from .plan import BootPlan, CpuMode
