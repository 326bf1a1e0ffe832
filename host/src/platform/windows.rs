//! Windows: owners and writers are security identifiers (SIDs) in a file's
//! security descriptor. "Written by this user" means the owner SID is this
//! process's user (or the system: `SYSTEM`, `BUILTIN\Administrators`, as root
//! is on Unix), and no entry of the access control list lets another SID
//! write, delete, or change the list or the owner.

use super::{FileIdentity, Stat};
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::Dir;
use std::fs::File;
use std::io;
use std::os::windows::io::AsRawHandle;
use std::ptr::null_mut;
use std::sync::OnceLock;
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_SUCCESS, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
    SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, EqualSid, GetAce, GetLengthSid, GetTokenInformation,
    INHERIT_ONLY_ACE, IsWellKnownSid, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES,
    TOKEN_QUERY, TOKEN_USER, TokenUser, WinBuiltinAdministratorsSid, WinCreatorOwnerRightsSid, WinLocalSystemSid,
};
use windows_sys::Win32::Storage::FileSystem::{
    BY_HANDLE_FILE_INFORMATION, CreateDirectoryW, FILE_BASIC_INFO, FileBasicInfo, GetFileInformationByHandle,
    GetFileInformationByHandleEx,
};
use windows_sys::Win32::System::SystemServices::{ACCESS_ALLOWED_ACE_TYPE, ACCESS_DENIED_ACE_TYPE};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// The access rights that let a holder change what a file or directory
/// holds: write or append data (add a file or a subdirectory, for a
/// directory), delete a child, delete or rename it, change its access list or
/// owner, and the generic rights that include these.
const WRITE_RIGHTS: u32 = 0x2 | 0x4 | 0x40 | 0x1_0000 | 0x4_0000 | 0x8_0000 | 0x1000_0000 | 0x4000_0000 | 0x0200_0000;
/// The access rights that let a holder read a file's data.
const READ_RIGHTS: u32 = 0x1 | 0x8000_0000 | 0x1000_0000 | 0x0200_0000;

/// 100-nanosecond ticks between 1601-01-01 (Windows' epoch) and 1970-01-01.
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;

fn ticks_to_unix(ticks: i64) -> (i64, i64) {
    let since = ticks - UNIX_EPOCH_TICKS;
    (since.div_euclid(10_000_000), since.rem_euclid(10_000_000) * 100)
}

fn handle_of(file: &impl AsRawHandle) -> HANDLE {
    file.as_raw_handle() as HANDLE
}

impl FileIdentity {
    /// The identity of the open `file`: its volume and index, size, last
    /// write and change time, from its handle.
    pub(crate) fn of(file: &File, _metadata: &std::fs::Metadata) -> io::Result<FileIdentity> {
        let handle = handle_of(file);
        // Safety: both structures are plain data that the calls fill in; the
        // handle is `file`'s, open for the length of the calls.
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        // Safety: as above.
        if unsafe { GetFileInformationByHandle(handle, &mut info) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: as above.
        let mut basic: FILE_BASIC_INFO = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<FILE_BASIC_INFO>() as u32;
        // Safety: `basic` is `size` bytes, of the class asked for.
        if unsafe { GetFileInformationByHandleEx(handle, FileBasicInfo, (&raw mut basic).cast(), size) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileIdentity {
            dev: u64::from(info.dwVolumeSerialNumber),
            ino: (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow),
            size: (u64::from(info.nFileSizeHigh) << 32) | u64::from(info.nFileSizeLow),
            mtime: ticks_to_unix(basic.LastWriteTime),
            ctime: ticks_to_unix(basic.ChangeTime),
        })
    }
}

/// The identity, size and modification of `dir/name` (opened, links not
/// followed: Windows has no stat by name that gives the file index);
/// `None` when it is not a regular file.
pub(crate) fn identity_by_name(dir: &Dir, name: &str) -> io::Result<Option<(FileIdentity, Stat)>> {
    let mut options = cap_std::fs::OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    let file = dir.open_with(name, &options)?.into_std();
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Ok(None);
    }
    let identity = FileIdentity::of(&file, &metadata)?;
    let modified_ms = u64::try_from(identity.mtime.0.saturating_mul(1000) + identity.mtime.1 / 1_000_000).unwrap_or(0);
    Ok(Some((identity, Stat { size: identity.size, modified_ms })))
}

/// The size and modification of `dir/name`, links not followed; `None` when
/// it is gone.
pub(crate) fn stat_at(dir: &Dir, name: &str) -> io::Result<Option<Stat>> {
    match dir.symlink_metadata(name) {
        Ok(metadata) => {
            let modified_ms = metadata
                .modified()
                .ok()
                .and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1));
            Ok(Some(Stat { size: metadata.len(), modified_ms }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// This process's user SID, as bytes.
fn me() -> io::Result<&'static [u8]> {
    static ME: OnceLock<Result<Vec<u8>, i32>> = OnceLock::new();
    let me = ME.get_or_init(|| {
        let mut token: HANDLE = null_mut();
        // Safety: the pseudo-handle of this process, and an out-pointer.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        let mut buffer = vec![0u64; 64];
        let mut needed = 0u32;
        let size = (buffer.len() * 8) as u32;
        // Safety: `buffer` is `size` bytes, aligned for TOKEN_USER.
        let ok = unsafe { GetTokenInformation(token, TokenUser, buffer.as_mut_ptr().cast(), size, &mut needed) };
        let error = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // Safety: the token was opened above and is closed once.
        unsafe { CloseHandle(token) };
        if ok == 0 {
            return Err(error);
        }
        // Safety: the call filled in a TOKEN_USER at the buffer's start, and
        // its SID lies within the buffer; its length is the SID's own.
        Ok(unsafe {
            let user = &*(buffer.as_ptr() as *const TOKEN_USER);
            let sid = user.User.Sid;
            std::slice::from_raw_parts(sid as *const u8, GetLengthSid(sid) as usize).to_vec()
        })
    });
    me.as_deref().map_err(|&code| io::Error::from_raw_os_error(code))
}

/// A SID in its string form (`S-1-5-...`), for messages.
fn sid_string(sid: PSID) -> String {
    let mut text = null_mut();
    // Safety: `sid` is a valid SID; the call allocates the string, freed below.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return "an unreadable SID".into();
    }
    // Safety: a NUL-terminated UTF-16 string from the call.
    let shown = unsafe {
        let len = (0..).take_while(|&i| *text.add(i) != 0).count();
        String::from_utf16_lossy(std::slice::from_raw_parts(text, len))
    };
    // Safety: allocated by ConvertSidToStringSidW with LocalAlloc.
    unsafe { LocalFree(text.cast()) };
    shown
}

/// A file's or directory's owner and access list, read from its handle.
struct Security {
    descriptor: PSECURITY_DESCRIPTOR,
    owner: PSID,
    dacl: *mut ACL,
}

impl Security {
    fn of(handle: HANDLE) -> io::Result<Security> {
        let (mut owner, mut dacl, mut descriptor) = (null_mut(), null_mut(), null_mut());
        let what = OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION;
        // Safety: out-pointers for the call, which allocates the descriptor
        // (freed on drop) that `owner` and `dacl` point into.
        let error = unsafe {
            GetSecurityInfo(handle, SE_FILE_OBJECT, what, &mut owner, null_mut(), &mut dacl, null_mut(), &mut descriptor)
        };
        if error != ERROR_SUCCESS {
            return Err(io::Error::from_raw_os_error(error as i32));
        }
        Ok(Security { descriptor, owner, dacl })
    }

    /// Whether `sid` is this user's or the system's.
    fn is_trusted(sid: PSID, me: &[u8]) -> bool {
        // Safety: `sid` points into the descriptor, `me` is a whole SID.
        unsafe {
            EqualSid(sid, me.as_ptr() as PSID) != 0
                || IsWellKnownSid(sid, WinLocalSystemSid) != 0
                || IsWellKnownSid(sid, WinBuiltinAdministratorsSid) != 0
        }
    }

    /// Why the owner is not trusted, if it is not.
    fn untrusted_owner(&self) -> io::Result<Option<String>> {
        let me = me()?;
        Ok((!Security::is_trusted(self.owner, me))
            .then(|| format!("owned by {}, not by this process's user {}", sid_string(self.owner), sid_string(me.as_ptr() as PSID))))
    }

    /// Who else than this user and the system the access list grants any of
    /// `rights`, if anyone: the first such SID.
    fn granted_to_others(&self, rights: u32) -> io::Result<Option<String>> {
        let me = me()?;
        if self.dacl.is_null() {
            return Ok(Some("without an access control list (everyone may do anything)".into()));
        }
        // Safety: a non-null DACL in the descriptor, whose ACEs `GetAce`
        // hands out one by one; each is read by its header's type.
        unsafe {
            let count = (*self.dacl).AceCount;
            for index in 0..u32::from(count) {
                let mut ace = null_mut();
                if GetAce(self.dacl, index, &mut ace) == 0 {
                    return Err(io::Error::last_os_error());
                }
                let header = &*(ace as *const ACE_HEADER);
                if u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0 || u32::from(header.AceType) == ACCESS_DENIED_ACE_TYPE {
                    // Applies only to what is created inside; or takes away.
                    continue;
                }
                if u32::from(header.AceType) != ACCESS_ALLOWED_ACE_TYPE {
                    return Ok(Some(format!("with an access control entry of type {} that this check does not read", header.AceType)));
                }
                let allowed = &*(ace as *const ACCESS_ALLOWED_ACE);
                let sid = (&raw const allowed.SidStart) as PSID;
                let owner_rights = IsWellKnownSid(sid, WinCreatorOwnerRightsSid) != 0;
                if allowed.Mask & rights != 0 && !owner_rights && !Security::is_trusted(sid, me) {
                    return Ok(Some(sid_string(sid)));
                }
            }
        }
        Ok(None)
    }
}

impl Drop for Security {
    fn drop(&mut self) {
        // Safety: allocated by GetSecurityInfo with LocalAlloc, freed once.
        unsafe { LocalFree(self.descriptor) };
    }
}

/// Why what `handle` refers to is not safe to load code from: an owner
/// other than this user or the system, or write access granted to others.
fn untrusted_by_acl(handle: HANDLE) -> io::Result<Option<String>> {
    let security = Security::of(handle)?;
    if let Some(owner) = security.untrusted_owner()? {
        return Ok(Some(owner));
    }
    Ok(security.granted_to_others(WRITE_RIGHTS)?.map(|who| format!("writable by {who}")))
}

/// Why an entry file is not trusted, if it is not: it must be a regular file
/// owned by this process's user (or the system) that no one else may write.
/// A valid digest proves a file whole, not who wrote it.
pub(crate) fn untrusted_file(file: &File, metadata: &std::fs::Metadata) -> Option<String> {
    if !metadata.is_file() {
        return Some("not a regular file".into());
    }
    match untrusted_by_acl(handle_of(file)) {
        Ok(problem) => problem,
        Err(e) => Some(format!("its owner and access list cannot be read ({e})")),
    }
}

/// Why a directory of the cache is not safe to load code from, if it is not.
pub(crate) fn insecure_directory(dir: &Dir) -> io::Result<Option<String>> {
    untrusted_by_acl(handle_of(dir))
}

/// The advice to fix what [`insecure_directory`] found.
pub(crate) const INSECURE_DIRECTORY_FIX: &str =
    "take ownership of it and remove other users' write access (icacls DIR /setowner %USERNAME% and icacls DIR /remove:g Users)";

/// Why a secret's file is exposed, if it is: another user may read or write
/// it, with the command that fixes it.
pub(crate) fn exposed_secret(file: &File, shown: &str) -> io::Result<Option<String>> {
    let security = Security::of(handle_of(file))?;
    Ok(security.granted_to_others(READ_RIGHTS | WRITE_RIGHTS)?.map(|who| {
        format!("can be read or written by {who}: run `icacls {shown} /inheritance:r /grant:r %USERNAME%:F`")
    }))
}

/// Why a symbolic link at the cache root is not followed: never on Windows,
/// where making one takes a privilege and the temporary directory is each
/// user's own, so no other user can plant one on the cache's path.
pub(crate) fn untrusted_link(_link: &std::fs::Metadata) -> Option<String> {
    None
}

/// Windows has no FIFOs in its file systems (named pipes live apart, under
/// `\\.\pipe\`, and are not regular files): nothing to ask.
pub(crate) fn open_without_blocking(_options: &mut cap_std::fs::OpenOptions) {}

/// The same, for a path outside any cache.
pub(crate) fn open_path_without_blocking(_options: &mut std::fs::OpenOptions) {}

/// Whether opening with links not followed failed because the name is a link
/// (`ERROR_STOPPED_ON_SYMLINK`, or cap-std's ELOOP).
pub(crate) fn is_link_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(681) | Some(1921))
}

/// Whether a removed file's name stays taken while anything holds the file
/// open: on Windows a removal only marks the file, which goes, name and
/// all, when the last handle closes (unless the volume removes with POSIX
/// semantics), and a mapped file cannot be removed at all. Until then no
/// new file can take the name. So the store renames a file aside before it
/// removes it.
pub(crate) const REMOVED_NAMES_LINGER: bool = true;

/// Whether a removal or a replacing rename failed because another process
/// has the file in use: mapped (`ERROR_ACCESS_DENIED`,
/// `ERROR_USER_MAPPED_FILE`) or open without sharing its deletion
/// (`ERROR_SHARING_VIOLATION`). Such a file can still be renamed, unless it
/// is open without that sharing: then it stays, and the next pass retries.
pub(crate) fn is_in_use(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(5 | 32 | 1224))
}

/// Opens so that the file's times can be set: Windows asks the handle for
/// the right to write attributes (`FILE_WRITE_ATTRIBUTES`), which a handle
/// opened for reading lacks; reading them (`FILE_READ_ATTRIBUTES`) gives its
/// identity. The file's data is neither read nor written.
pub(crate) fn open_to_set_times(options: &mut cap_std::fs::OpenOptions) {
    use cap_std::fs::OpenOptionsExt;
    use windows_sys::Win32::Storage::FileSystem::{FILE_READ_ATTRIBUTES, FILE_WRITE_ATTRIBUTES};
    options.access_mode(FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES);
}

/// Files take their access list from their directory: nothing to set.
pub(crate) fn create_with_mode(_options: &mut cap_std::fs::OpenOptions, _mode: u32) {}

/// Directories take their access list from their parent: the root is made
/// private by [`create_private_dir`].
pub(crate) fn dir_builder(_mode: u32) -> cap_std::fs::DirBuilder {
    cap_std::fs::DirBuilder::new()
}

/// The same, for the parents of the cache root.
pub(crate) fn path_dir_builder(_mode: u32) -> std::fs::DirBuilder {
    std::fs::DirBuilder::new()
}

/// Creates the cache root with an access list of its own, not inherited:
/// full control for this user, the system and administrators, nothing for
/// anyone else (Unix's 0700). What it holds inherits the same.
pub(crate) fn create_private_dir(path: &std::path::Path, _mode: u32) -> io::Result<()> {
    use std::os::windows::ffi::OsStrExt;
    let me = me()?;
    let sddl = format!("D:P(A;OICI;FA;;;{})(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)", sid_string(me.as_ptr() as PSID));
    let sddl: Vec<u16> = sddl.encode_utf16().chain([0]).collect();
    let mut descriptor = null_mut();
    // Safety: a NUL-terminated string; the call allocates the descriptor,
    // freed below.
    if unsafe { ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl.as_ptr(), SDDL_REVISION_1, &mut descriptor, null_mut()) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor,
        bInheritHandle: 0,
    };
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
    // Safety: a NUL-terminated path and attributes that live for the call.
    let created = unsafe { CreateDirectoryW(wide.as_ptr(), &attributes) };
    let error = io::Error::last_os_error();
    // Safety: allocated by the conversion above, freed once.
    unsafe { LocalFree(descriptor) };
    if created == 0 { Err(error) } else { Ok(()) }
}

/// Exactly `buffer.len()` bytes at `offset`, leaving the file's position
/// where it was, as Unix's `pread` does (Windows' positioned read moves it,
/// and callers read on from the start after a look at the trailer).
pub(crate) fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::Seek;
    let position = (&mut &*file).stream_position()?;
    let read = read_exact_at_moving(file, buffer, offset);
    (&mut &*file).seek(io::SeekFrom::Start(position))?;
    read
}

fn read_exact_at_moving(file: &File, mut buffer: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buffer.is_empty() {
        match file.seek_read(buffer, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buffer = &mut buffer[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a file that is not a regular file is, for a message.
pub(crate) fn kind_of_special(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}
