"""What the diffusion runtime's models, schedulers and pipelines share, and nothing of serving.

- `configuration`: constructor arguments as a frozen config, saved and reloaded as JSON;
- `hub`: where a model's or pipeline's files are (a local folder or the Hugging Face cache);
- `subclasses`: a base class's family, found without importing the modules that import it.

Imports run one way: serving (`worker.app`, the runner, batcher, cache, leases) uses the
runtime (`worker.models`, `worker.schedulers`, `worker.pipelines`, `worker.lora` and this
package); nothing here imports serving, `shared` or `api` (`tests/infra/test_runtime_imports.py`).
"""
