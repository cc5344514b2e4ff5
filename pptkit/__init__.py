"""pptkit: large-scale 3D representation learning on point clouds, behind one CLI."""

__version__ = "0.1.0"
