"""libzfs_core through cffi (ABI mode): the stable, thin ioctl interface of OpenZFS.

Only the calls the ZFS backend needs are declared (<libzfs_core.h>, <libnvpair.h> of OpenZFS 2.x):
``lzc_create``, ``lzc_snapshot``, ``lzc_rollback_to``, ``lzc_clone``, ``lzc_destroy``,
``lzc_destroy_snaps``, ``lzc_exists``, with properties passed as nvlists. :func:`load` returns
None where the libraries or /dev/zfs are missing (zfs-fuse hosts), and the backend then uses
zfs(8). Each call returns an errno, raised here as :class:`LzcError` for the backend to name.
"""
import os

CDEF = """
typedef struct nvlist nvlist_t;
typedef unsigned int uint_t;
typedef enum { B_FALSE = 0, B_TRUE = 1 } boolean_t;
enum lzc_dataset_type { LZC_DATSET_TYPE_ZFS = 2, LZC_DATSET_TYPE_ZVOL = 3 };

int nvlist_alloc(nvlist_t **nvlp, uint_t nvflag, int kmflag);
void nvlist_free(nvlist_t *nvl);
int nvlist_add_boolean(nvlist_t *nvl, const char *name);
int nvlist_add_uint64(nvlist_t *nvl, const char *name, uint64_t val);
int nvlist_add_string(nvlist_t *nvl, const char *name, const char *val);

int libzfs_core_init(void);
void libzfs_core_fini(void);
int lzc_create(const char *fsname, enum lzc_dataset_type type, nvlist_t *props,
               uint8_t *wkeydata, uint_t wkeylen);
int lzc_snapshot(nvlist_t *snaps, nvlist_t *props, nvlist_t **errlist);
int lzc_clone(const char *fsname, const char *origin, nvlist_t *props);
int lzc_rollback_to(const char *fsname, const char *snapname);
int lzc_destroy(const char *fsname);
int lzc_destroy_snaps(nvlist_t *snaps, boolean_t defer, nvlist_t **errlist);
boolean_t lzc_exists(const char *dataset);
"""
NV_UNIQUE_NAME = 0x1
LIBRARIES = {"libzfs_core": ("libzfs_core.so.3", "libzfs_core.so"),
             "libnvpair": ("libnvpair.so.3", "libnvpair.so")}


class LzcError(Exception):
    def __init__(self, call, errno):
        super().__init__(f"{call}: {os.strerror(errno)}")
        self.call = call
        self.errno = errno


def _dlopen(ffi, names):
    for name in names:
        try:
            return ffi.dlopen(name)
        except OSError:
            continue
    return None


class Lzc:
    """The loaded libraries; one per process (libzfs_core_init keeps /dev/zfs open)."""

    name = "libzfs_core"

    def __init__(self, ffi, core, nvpair):
        self.ffi, self.core, self.nvpair = ffi, core, nvpair

    def _nvlist(self, strings=(), uint64s=None, booleans=()):
        nvl = self.ffi.new("nvlist_t **")
        self._check("nvlist_alloc", self.nvpair.nvlist_alloc(nvl, NV_UNIQUE_NAME, 0))
        try:
            for name in booleans:
                self._check("nvlist_add_boolean", self.nvpair.nvlist_add_boolean(nvl[0], name.encode()))
            for name, value in (uint64s or {}).items():
                self._check("nvlist_add_uint64",
                            self.nvpair.nvlist_add_uint64(nvl[0], name.encode(), value))
            for name, value in dict(strings).items():
                self._check("nvlist_add_string",
                            self.nvpair.nvlist_add_string(nvl[0], name.encode(), value.encode()))
        except BaseException:
            self.nvpair.nvlist_free(nvl[0])
            raise
        return self.ffi.gc(nvl[0], self.nvpair.nvlist_free)

    @staticmethod
    def _check(call, rc):
        if rc != 0:
            raise LzcError(call, rc)

    def create(self, dataset, *, volsize=None):
        kind = self.core.LZC_DATSET_TYPE_ZFS if volsize is None else self.core.LZC_DATSET_TYPE_ZVOL
        props = self._nvlist(uint64s={} if volsize is None else {"volsize": volsize})
        self._check("lzc_create", self.core.lzc_create(dataset.encode(), kind, props,
                                                      self.ffi.NULL, 0))

    def snapshot(self, snapshot):
        errlist = self.ffi.new("nvlist_t **")
        rc = self.core.lzc_snapshot(self._nvlist(booleans=[snapshot]), self.ffi.NULL, errlist)
        if errlist[0] != self.ffi.NULL:
            self.nvpair.nvlist_free(errlist[0])
        self._check("lzc_snapshot", rc)

    def clone(self, dataset, origin):
        self._check("lzc_clone", self.core.lzc_clone(dataset.encode(), origin.encode(),
                                                    self._nvlist()))

    def rollback_to(self, dataset, snapshot):
        self._check("lzc_rollback_to", self.core.lzc_rollback_to(dataset.encode(), snapshot.encode()))

    def destroy(self, dataset):
        if "@" in dataset:
            errlist = self.ffi.new("nvlist_t **")
            rc = self.core.lzc_destroy_snaps(self._nvlist(booleans=[dataset]), self.core.B_FALSE,
                                             errlist)
            if errlist[0] != self.ffi.NULL:
                self.nvpair.nvlist_free(errlist[0])
            self._check("lzc_destroy_snaps", rc)
        else:
            self._check("lzc_destroy", self.core.lzc_destroy(dataset.encode()))

    def exists(self, dataset):
        return bool(self.core.lzc_exists(dataset.encode()))


_LOADED = []


def load():
    """The libzfs_core binding, or None where it cannot be used (no library or no /dev/zfs)."""
    if _LOADED:
        return _LOADED[0]
    lzc = None
    if os.path.exists("/dev/zfs"):
        import cffi  # here, not at import: most hosts never get this far

        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        core = _dlopen(ffi, LIBRARIES["libzfs_core"])
        nvpair = _dlopen(ffi, LIBRARIES["libnvpair"])
        if core is not None and nvpair is not None and core.libzfs_core_init() == 0:
            lzc = Lzc(ffi, core, nvpair)
    _LOADED.append(lzc)
    return lzc
