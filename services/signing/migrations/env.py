from services.runtime.migrations import run_env
from services.signing.models import Base

run_env(Base.metadata)
