"""Training the tiny CPU teacher on the procedural world (``dd3g teacher pretrain | recipe | export``).

* :mod:`.data` — the multi-view training cache rendered from procedural objects;
* :mod:`.config` — ``TeacherTrainConfig`` and its training presets;
* :mod:`.train` — the resumable trainer (``pretrain_tiny_teacher``);
* :mod:`.checkpoint` — its checkpoints and the export to a ``TinyTeacher`` folder;
* :mod:`.grow` — function-preserving growth of a trained U-Net (more attention levels, image concat);
* :mod:`.recipe` — the staged recipe that made the shipped teacher, as one resumable call.
"""
