"""Pipeline steps: the only functions that take a Store.

Each step reads the store, computes with the pure modules of ``core`` and commits a run (config as
JSON, summary, package versions), so its output can be traced and reproduced. The CLI
(``python -m core``) and the app's loaders call these same functions. One module per family:

    ingest        ingest, ingest_rollouts, import_descriptions
    featurize     train_sae, featurize (single process)
    featurize_ray featurize_ray: the same step over a Ray cluster
    space         cluster (+ cluster_evidence), dedup, project
    probes        probe: difficulty and quality signals
    rewards       score_rewards, import_rewards, verify_dataset, responses_dataset, reward_probe, ...
    judge         judge, calibration
    export        export (plan, rows, manifest)
    rules         removed_view, check_on_store
    doctor        diagnose
    demo          build_demo
    base          what they share (versions, ChunkWriter, feature_matrix, feature_labels)

Import a step from its module (``from core.steps.featurize import featurize``): importing the
package imports nothing, so a page that exports does not load torch.
"""
