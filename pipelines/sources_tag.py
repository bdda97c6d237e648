"""Run tags of the retrain: ``dd3g/sources`` carries a retrain's source fingerprint
(``dd3g_core.promotion.sources``) from the nightly schedule to ``accepted_student``, which records it in the
pointer (the schedule skips a tick whose sources are the accepted student's); ``dd3g/warm_start``
(``true``/``false``, set by the ``retrain`` job from the profile) tells ``pepd_student`` whether to start from
the accepted student when its run config does not say."""

SOURCES_TAG = "dd3g/sources"
WARM_START_TAG = "dd3g/warm_start"
