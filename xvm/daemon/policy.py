"""What xvmd does with domains when it starts and stops (xVM's svc:/system/xvm/domains).

* Starting: every persistent domain marked ``autostart`` that is not running is
  started (onxendstart=start), in parallel; a failure is logged and does not stop the
  others or the service.
* Stopping: every running domain gets its ``on_host_stop`` policy, in parallel, so the
  service is down within the longest ``shutdown_timeout``: ``"shutdown"`` presses the
  ACPI power button and destroys the domain if it has not powered off in time,
  ``"destroy"`` destroys it at once, ``"ignore"`` leaves it running (a restarted xvmd
  adopts it, same id, console intact).
"""
import logging
import threading

from ..domain import ShutdownTimeout
from ..errors import XvmError
from ..vmm.lifecycle import DomainState

log = logging.getLogger(__name__)

RUNNING = (DomainState.RUNNING, DomainState.PAUSED)


def start_autostart_domains(host):
    """Start the autostart domains that are not running; returns {name: "started" or error}."""
    targets = [host.lookup(r.uuid) for r in host.store.domains() if r.autostart and r.persistent]
    return _in_parallel(targets, _autostart)


def apply_host_stop_policies(host):
    """Apply each running domain's ``on_host_stop``; returns {name: what was done}."""
    targets = []
    for record in host.store.domains():
        domain = host.lookup(record.uuid)
        try:
            if domain.state in RUNNING:
                targets.append(domain)
        except XvmError:
            pass
    return _in_parallel(targets, _host_stop)


def _autostart(domain):
    if domain.state in RUNNING:
        return "already running"
    domain.start()
    return "started"


def _host_stop(domain):
    config = domain.config
    policy = config.on_host_stop
    if policy == "ignore":
        return "left running"
    if policy == "shutdown" and domain.state is DomainState.RUNNING:
        try:
            domain.shutdown(timeout=config.shutdown_timeout)
            return "shut down"
        except ShutdownTimeout:
            log.warning("domain %s did not power off within %gs: destroying it", config.name,
                        config.shutdown_timeout)
    domain.destroy()
    return "destroyed"


def _in_parallel(domains, action):
    results = {}

    def run(domain):
        name = str(domain.uuid)
        try:
            name = domain.name
            results[name] = action(domain)
        except XvmError as e:
            log.error("domain %s: %s", name, e)
            results[name] = f"error: {e}"
        log.info("domain %s: %s", name, results[name])

    threads = [threading.Thread(target=run, args=(d,), name="xvmd-policy") for d in domains]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
