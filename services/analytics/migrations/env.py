from services.analytics import report_models  # noqa: F401 - the reports table, on the same Base
from services.analytics.models import Base
from services.runtime.migrations import run_env

run_env(Base.metadata)
