"""The guest's sandbox: after boot, the hypercall channel is the only way out.

A Solo5 guest cannot open a file or a socket because it has no system calls
at all, only hypercalls. A Python guest is a Linux process, so ``install``
takes the system calls away: it loads a seccomp filter (libseccomp, through
``ctypes``) that allows the few calls a running interpreter needs on
descriptors it already holds, memory and time, and kills the whole process
(``SCMP_ACT_KILL_PROCESS``, SIGSYS) on any other. Everything the guest
does with the world then goes through ``read``/``write``-style calls on the
channel, i.e. through the tender.

Two layers, with one job each:

1. **seccomp does the enforcing.** The kernel checks every system call of
   every thread (``SCMP_FLTATR_CTL_TSYNC``) against ``ALLOWED``. Nothing in
   Python can undo it; ``no_new_privs`` is set as seccomp requires.
2. **An audit hook only names the call.** A process killed by SIGSYS cannot
   say why, so before the filter is loaded ``sys.addaudithook`` installs a
   hook that watches Python's audit events for operations that are about to
   make a forbidden call (``open`` of a path, ``socket.__new__``,
   ``socket.connect``, ``os.exec``, ``os.fork``, ``subprocess.Popen``, an
   import that must search the file system, ...). For those it sends one
   ``PUTS`` whose text is exactly ``"\\x00sandbox-refused:<name>"`` (the
   NUL cannot start console text) and then lets the operation go on into
   the filter, which kills the process. The tender, seeing the guest die by
   SIGSYS, reports the name from the last such note. The hook never blocks
   or changes anything: a call it does not know is still refused, just
   without a name; a note followed by no death means the operation needed
   no forbidden call after all (the tender ignores it).

What is refused, among everything not in ``ALLOWED``: ``open``/``openat``/
``openat2``/``creat`` and every other path call (``stat`` too: a guest has
no file system to look at), ``socket``/``socketpair``/``connect``/``bind``/
``listen``/``accept``, ``execve``/``execveat``, ``fork``/``vfork`` and
``clone`` without ``CLONE_THREAD`` (threads stay possible; processes do
not), ``ptrace``, ``process_vm_readv``/``writev``, ``kill``/``tgkill`` of any
process but our own. ``clone3`` fails with ``ENOSYS`` instead of killing:
its flags live in memory where seccomp cannot look, and the C library falls
back to ``clone``, which the filter can check.

Side effects of ``install`` besides the filter: core dumps are turned off
(``RLIMIT_CORE`` 0; a killed guest's memory is not written anywhere), and
``linecache`` stops reading source files (tracebacks print without source
lines rather than killing the guest to fetch them).

``install`` raises ``SandboxError`` (nothing installed) when libseccomp is
missing or refuses the filter: the image cannot run without its sandbox,
and says how to get one (``apt-get install libseccomp2``).
"""

from __future__ import annotations

import _imp
import ctypes
import errno
import linecache
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

REFUSED_NOTE = b"\x00sandbox-refused:"
"""Prefix of the console note naming the call the sandbox is about to refuse."""

ALLOWED: dict[str, str] = {
    # Descriptors held before install: the channel, the loop's self-pipe,
    # /dev/null on 0-2. Running Suresh under the real tender uses only the
    # first four of these, plus getpid.
    "recvfrom": "socket.recv_into: every hypercall's response",
    "sendto": "socket.send: every hypercall's request; the loop's self-pipe",
    "sendmsg": "socket.sendmsg: NET_WRITE and BLOCK_WRITE gather their parts",
    "pselect6": "HvtSelector's zero-timeout look at the self-pipe (glibc's select)",
    "select": "the same, with a C library that calls select itself",
    "close": "the loop closing its self-pipe at exit",
    "read": "reads on held descriptors",
    "write": "the interpreter's last-resort messages to fd 2 (/dev/null under the tender)",
    "writev": "the C library's fatal-error messages (malloc corruption, abort)",
    # Memory: any allocation may need these.
    "brk": "malloc",
    "mmap": "malloc of large blocks, pymalloc arenas, thread stacks",
    "munmap": "freeing them",
    "mremap": "realloc of large blocks",
    "mprotect": "growing the malloc heaps of threads; stack guard pages",
    "madvise": "malloc returning memory (MADV_DONTNEED)",
    # Time: normally answered by the vDSO without a system call.
    "clock_gettime": "time.monotonic/time.time when the vDSO cannot answer",
    "gettimeofday": "the same, older interface",
    "clock_getres": "time.get_clock_info",
    "clock_nanosleep": "time.sleep",
    "nanosleep": "time.sleep with older C libraries",
    # Threads, signals, identity.
    "getpid": "asyncio checks it on every get_running_loop(); logging records it",
    "gettid": "threading.get_native_id, the C library's locks",
    "futex": "locks: the GIL with more than one thread, threading",
    "sched_yield": "lock hand-offs",
    "set_robust_list": "every new thread (with clone, below)",
    "rseq": "every new thread (restartable sequences)",
    "rt_sigaction": "signal.signal",
    "rt_sigprocmask": "thread creation blocks signals around clone; abort()",
    "rt_sigreturn": "returning from any signal handler",
    "sigaltstack": "signal stacks of new threads",
    "restart_syscall": "a call interrupted by a signal resumes",
    "getrandom": "os.urandom, random seeding",
    "exit": "a thread ending",
    "exit_group": "the process ending (os._exit after HALT)",
}
"""System calls the filter allows unconditionally, each with its reason.

Three more have rules of their own: ``clone`` only with ``CLONE_THREAD``
(threads, never processes); ``kill``/``tgkill`` only aimed at our own pid
(``os.kill(os.getpid(), ...)``, ``abort()``); ``clone3`` fails with
``ENOSYS`` so that the C library falls back to ``clone``."""

# libseccomp's constants (seccomp.h).
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO_BASE = 0x00050000
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
CLONE_THREAD = 0x00010000


class SandboxError(RuntimeError):
    """The sandbox cannot be installed; ``str()`` says why and what to do."""


class _ArgCompare(ctypes.Structure):
    # struct scmp_arg_cmp { unsigned int arg; enum scmp_compare op; scmp_datum_t datum_a, datum_b; }
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_installed = False


def installed() -> bool:
    return _installed


def install(hypercalls: Any) -> None:
    """Install the filter and the naming hook; idempotent.

    ``hypercalls`` is the guest's ``Hypercalls`` (anything with
    ``puts(bytes)``): the hook sends its notes through it.
    """
    global _installed
    if _installed:
        return
    library = _libseccomp()
    context = library.seccomp_init(SCMP_ACT_KILL_PROCESS)
    if not context:
        raise SandboxError("seccomp_init failed: cannot build the sandbox filter")
    try:
        _check(library.seccomp_attr_set(context, SCMP_FLTATR_CTL_TSYNC, 1), "synchronise the filter across threads")
        for name in ALLOWED:
            number = library.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue  # not a system call on this architecture
            _check(library.seccomp_rule_add_array(context, SCMP_ACT_ALLOW, number, 0, None), f"allow {name}")
        _add_rule(library, context, SCMP_ACT_ALLOW, "clone", _ArgCompare(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
        _add_rule(library, context, SCMP_ACT_ERRNO_BASE | errno.ENOSYS, "clone3")
        pid = os.getpid()
        _add_rule(library, context, SCMP_ACT_ALLOW, "kill", _ArgCompare(0, SCMP_CMP_EQ, pid, 0))
        _add_rule(library, context, SCMP_ACT_ALLOW, "tgkill", _ArgCompare(0, SCMP_CMP_EQ, pid, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _disable_linecache()
        sys.addaudithook(_hook(hypercalls.puts))
        _check(library.seccomp_load(context), "load the filter")
    finally:
        library.seccomp_release(context)
    _installed = True


# -- the naming hook ---------------------------------------------------------------------

_EVENTS = {
    "open": "open",
    "os.listdir": "open",
    "os.scandir": "open",
    "os.mkdir": "mkdir",
    "os.rmdir": "rmdir",
    "os.remove": "unlink",
    "os.rename": "rename",
    "os.link": "link",
    "os.symlink": "symlink",
    "os.chmod": "chmod",
    "os.chown": "chown",
    "os.chdir": "chdir",
    "os.truncate": "truncate",
    "os.utime": "utime",
    "socket.__new__": "socket",
    "socket.connect": "connect",
    "socket.bind": "bind",
    "os.exec": "execve",
    "os.posix_spawn": "execve",
    "os.system": "execve",
    "subprocess.Popen": "execve",
    "os.fork": "fork",
    "os.forkpty": "fork",
    "os.kill": "kill",
    "os.killpg": "kill",
    "import": "open",
}


def _hook(puts: Callable[[bytes], None]) -> Callable[[str, tuple[Any, ...]], None]:
    own_pid = os.getpid()
    builtin = frozenset(sys.builtin_module_names)
    is_frozen = _imp.is_frozen
    noting = False

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal noting
        name = _EVENTS.get(event)
        if name is None or noting:
            return
        if event == "open" and (isinstance(args[0], int) or args[0] is None):
            return  # wrapping a descriptor we hold opens nothing
        if event == "os.kill" and args[0] == own_pid:
            return
        if event == "import" and (args[0] in builtin or is_frozen(args[0])):
            return  # found without touching the file system
        noting = True
        try:
            puts(REFUSED_NOTE + name.encode())
        except Exception:  # a note is a courtesy; the filter refuses either way
            pass
        finally:
            noting = False

    return hook


def _disable_linecache() -> None:
    # Tracebacks would stat and open source files (or re-open the image to
    # ask its zipimporter): both are refused. Lines already cached still
    # show; others are left out.
    def checkcache(filename: str | None = None) -> None:
        return None

    def updatecache(filename: str, module_globals: Any = None) -> list[str]:
        return []

    linecache.checkcache = checkcache
    linecache.updatecache = updatecache


# -- libseccomp ---------------------------------------------------------------------------

_library: ctypes.CDLL | None = None
LIBRARY_NAMES = ("libseccomp.so.2", "libseccomp.so")


def _libseccomp() -> ctypes.CDLL:
    global _library
    if _library is not None:
        return _library
    # dlopen searches the linker's cache itself; ctypes.util.find_library
    # would import subprocess and friends into every guest to do the same.
    for path in LIBRARY_NAMES:
        try:
            library = ctypes.CDLL(path, use_errno=True)
            break
        except OSError:
            continue
    else:
        raise SandboxError(
            "libseccomp is not installed, and an hvt guest cannot run without its sandbox "
            "(apt-get install libseccomp2)"
        )
    library.seccomp_init.restype = ctypes.c_void_p
    library.seccomp_init.argtypes = [ctypes.c_uint32]
    library.seccomp_attr_set.restype = ctypes.c_int
    library.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    library.seccomp_syscall_resolve_name.restype = ctypes.c_int
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    library.seccomp_rule_add_array.restype = ctypes.c_int
    library.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCompare)
    ]
    library.seccomp_load.restype = ctypes.c_int
    library.seccomp_load.argtypes = [ctypes.c_void_p]
    library.seccomp_release.restype = None
    library.seccomp_release.argtypes = [ctypes.c_void_p]
    _library = library
    return library


def _add_rule(library: ctypes.CDLL, context: int, action: int, name: str, *compares: _ArgCompare) -> None:
    number = library.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        return
    array = (_ArgCompare * len(compares))(*compares) if compares else None
    _check(library.seccomp_rule_add_array(context, action, number, len(compares), array), f"add the rule for {name}")


def _check(result: int, what: str) -> None:
    if result < 0:
        raise SandboxError(f"libseccomp could not {what}: {os.strerror(-result)}")
