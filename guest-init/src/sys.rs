//! The raw system calls nix does not wrap: device-mapper and network-interface ioctls.
//!
//! This is the only module of cocoon-init with `unsafe` (house style rule 11). Buffers are
//! built and checked by safe code ([`crate::dm`], `libc` structs zero-initialised here); each
//! ioctl gets a pointer to memory that outlives the call and is at least as large as the
//! request's declared size.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::dm;

/// Issues a device-mapper ioctl on `/dev/mapper/control` with `buf` (built by [`dm`]).
pub fn dm_ioctl(control: &File, request: u32, buf: &mut [u8]) -> io::Result<()> {
    if buf.len() < dm::BUFFER_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "dm buffer too small",
        ));
    }
    // SAFETY: `buf` is a live, writable buffer of dm::BUFFER_SIZE bytes whose header declares
    // data_size = dm::BUFFER_SIZE, so the kernel reads and writes within it; the fd is open.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), request as _, buf.as_mut_ptr()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes the child of `cmd` start with an empty signal mask. PID 1 blocks SIGCHLD, SIGTERM and
/// SIGINT to read them from a signalfd, and a spawned process inherits that mask (std does not
/// reset it): without this, the service would never see the SIGTERM that asks it to stop.
pub fn unblock_signals_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls sigemptyset and
    // pthread_sigmask, which are async-signal-safe; it touches no memory shared with the parent
    // other than its own stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            if libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes fds 0, 1 and 2 refer to `console` (PID 1 started without them).
pub fn console_to_stdio(console: &File) {
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; nothing else in the process owns fds 0-2
        // at this point (they were closed when the kernel started us without a console).
        unsafe {
            libc::dup2(console.as_raw_fd(), fd);
        }
    }
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own exclusively.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name",
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-old-data socket addresses; this
    // is the conversion the socket API defines.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl_ifreq(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `req` is a valid, writable ifreq for the duration of the call, which is what
    // the SIOC{G,S}IF* requests read and write.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `IFF_UP` on an interface.
pub fn link_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    ioctl_ifreq(&sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl_ifreq(&sock, libc::SIOCSIFFLAGS, &mut req)
}

/// Assigns an IPv4 address and netmask to an interface.
pub fn set_ipv4(name: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl_ifreq(&sock, libc::SIOCSIFADDR, &mut req)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask);
    ioctl_ifreq(&sock, libc::SIOCSIFNETMASK, &mut req)
}

/// Adds the default route via `gateway`.
pub fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    // SAFETY: rtentry is plain old data; all-zero is a valid value (null rt_dev = any device).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: `rt` is a valid rtentry for the duration of the call, as SIOCADDRT expects.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &mut rt as *mut libc::rtentry,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
