from services.ingest.models import Base
from services.runtime.migrations import run_env

run_env(Base.metadata)
