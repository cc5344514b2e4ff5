"""Synthetic rooms and shapes written in real datasets' raw formats: pptkit's default data.

`scenes.make_scene` builds one room in a style (scannet, s3dis, structured3d) with that
style's domain traits (see `styles`); `objects.make_object` one ModelNet-style shape;
`writers` puts them on disk in each dataset's own layout.
"""
