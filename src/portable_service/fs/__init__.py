"""The image as a file system, shared by building and looking inside: the image tree the
builder lays out (:mod:`.tree`) and the views every check walks (:mod:`.views`: the host, a
built image, a tree not yet written)."""
