"""``soci-wrapper verify``: does an image's SOCI index serve lazy loading? Checked at three levels:

* ``registry_checks``: discovery as the SOCI snapshotter does it, the index manifest, every zTOC blob
  (``ztocfmt`` reads the facts of a zTOC without soci);
* ``content_checks``: soci decodes each zTOC and reads files through it, compared with the layer's tar stream;
* ``consumer``: soci-snapshotter-grpc pulls the image lazily through a private containerd (FUSE mounts), and
  files read through it match.

``run`` is the sequence, ``report`` the result, ``console`` the command line's part.
"""
