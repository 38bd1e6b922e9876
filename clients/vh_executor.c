/*
 * cowsim validate-host executor: runs scenario steps as real processes on a real kernel.
 *
 * A scenario script (docs/design.md "Scenario scripts") is compiled by
 * cowsim.clients.validate_host into a plan of commands, one per line, read from stdin;
 * this program runs them and prints one result line per command on stdout.  It is
 * self-contained C over raw system calls (no liburing), so it can be linked statically
 * and run inside a minimal initramfs (cowsim validate-host --kernel-image, issue 11).
 *
 * Model: every scenario process is a real process.  The driver (this program's first
 * process) never maps a region itself: it forks one process per process the scenario
 * creates by mmap, and a scenario fork is a real fork() inside that process.  Every
 * process reads its commands from its own pipe and answers on its own pipe; the driver
 * creates all of them (and the scenario's vmsplice pipes) before the first fork, so every
 * process inherits every end it needs.  The driver is a child subreaper, so a process
 * whose parent exited is still reaped here; "end" kills and reaps them all.
 *
 * Plan lines:
 *   scenario PROCS PIPES IDS            begin a scenario (fresh state)
 *   cmd SEQ FLAGS REQ OP ARGS...        FLAGS "s" (changes state) or "o" (observes);
 *                                       REQ "-" or features joined by ","
 *   end                                 kill and reap the scenario's processes
 * Result lines:
 *   caps KEY=0|1 ...                    once, first: what this kernel lets us do
 *   uname RELEASE
 *   res SEQ ok [flt=N] [val=V,V..] [pm=HEX,HEX..]
 *   res SEQ err ERRNO WHAT
 *   res SEQ skip FEATURE                a required feature is missing
 *   res SEQ after SEQ0                  not run: state-changing command SEQ0 was skipped
 *   done
 *
 * Ops (P process, R region, ID held-reference id, PIPE pipe: small integers; PAGES a
 * comma-separated page list):
 *   mmap P R NPAGES SHARED POPULATE     munmap P R        fork P CHILD        exit P
 *   write P R VALUE PAGES               read P R PAGES    peek P R PAGES      pm P R
 *   mprotect P R PROT(0 none,1 r,3 rw)  madvise P R ADVICE PAGES              clearrefs P
 *   vmsplice P R PIPE PAGES             pipepeek PIPE     drain
 *   uring P R ID PAGES                  dmaw P ID VALUE   dmar P ID           release P ID
 *   odread P R VALUE PAGES              odwrite P R PAGES
 *   uffdreg P R                         uffdwp P R PROTECT PAGES
 * "flt" is the faults (minor + major) the process took during the operation (getrusage), "val" the
 * first 32-bit word of each page, "pm" each page's raw /proc/self/pagemap entry.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sched.h>
#include <unistd.h>

#define PAGE 4096
#define MAX_PROCS 64
#define MAX_REGIONS 64
#define MAX_PIPES 64
#define MAX_IDS 64
#define MAX_PAGES 4096
#define LINE 65536
#define REPLY_TIMEOUT_MS 20000

static char *odirect_dir = "/tmp";

/* ---- per-process state (inherited across fork, as the kernel's is) ---------------- */
struct region {
    char *addr;
    long npages;
    int mapped;
    unsigned char dontfork[MAX_PAGES];
    unsigned char uffd_wp[MAX_PAGES];  /* protected by UFFDIO_WRITEPROTECT, as we asked */
};
struct ring {
    int fd;
    int memfd;
    unsigned sq_entries;
    void *sq, *cq, *sqes;
    size_t sq_size, cq_size, sqes_size;
    struct io_uring_params p;
    long npages;
    char *addrs[MAX_PAGES];
};
static struct region regions[MAX_REGIONS];
static struct ring rings[MAX_IDS];
static int uffd = -1;

/* ---- pipes the driver creates before the first fork -------------------------------- */
static int cmd_r[MAX_PROCS], cmd_w[MAX_PROCS], rep_r[MAX_PROCS], rep_w[MAX_PROCS];
static int data_r[MAX_PIPES], data_w[MAX_PIPES];
static int nprocs, npipes, nids;
static pid_t pids[MAX_PROCS];
static int alive[MAX_PROCS];

static int parse_pages(char *text, long *out) {
    int n = 0;
    if (!text || !*text || strcmp(text, "-") == 0) return 0;
    for (char *tok = strtok(text, ","); tok && n < MAX_PAGES; tok = strtok(NULL, ","))
        out[n++] = strtol(tok, NULL, 10);
    return n;
}

/* Faults this process has taken: minor and major (a swap-in that read the swap device
 * counts as major), as the model's page_faults counts both. */
static long faults_taken(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt + ru.ru_majflt;
}

/* The count a measured window starts from.  getrusage is called twice: on the 6.18 host the
 * first call after another scenario process exited or unmapped shared pages now and then
 * took a fault of its own (between two getrusage calls, before the measured access; seen as
 * one extra fault in about one window in twenty, never with a second call in front). */
static long __attribute__((noinline)) window_start(void) {
    (void)faults_taken();
    return faults_taken();
}

/* Touch the stack below us and the rusage path so that a process's first command after a
 * fork takes its own COW faults here, not inside the measured window. */
static void __attribute__((noinline)) warm(void) {
    volatile char pad[65536];
    for (size_t i = 0; i < sizeof pad; i += 512) pad[i] = 1;
    (void)faults_taken();
    (void)faults_taken();
}

/* Map every page of this program's own text, data and stack now (a read per page), so
 * that running the executor's code inside a measured window takes no fault: fork copies
 * no PTEs of file-backed mappings, so a child would otherwise fault its text in on first
 * use.  The scenario's regions are left alone. */
static void prefault_self(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) return;
    char line[512];
    while (fgets(line, sizeof line, maps)) {
        unsigned long start, end;
        char perms[8] = {0};
        if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) != 3 || perms[0] != 'r') continue;
        if (strstr(line, "[vvar") || strstr(line, "[vsyscall]")) continue;
        int ours = 1;
        for (int i = 0; i < MAX_REGIONS; i++)
            if (regions[i].mapped && (unsigned long)(uintptr_t)regions[i].addr < end &&
                (unsigned long)(uintptr_t)regions[i].addr + (unsigned long)regions[i].npages * PAGE > start)
                ours = 0;
        if (!ours) continue;
        for (unsigned long at = start; at < end; at += PAGE) (void)*(volatile char *)at;
    }
    fclose(maps);
}

static int check_page(int r, long page) {
    return r >= 0 && r < MAX_REGIONS && regions[r].mapped && page >= 0 && page < regions[r].npages;
}

static void append(char *out, size_t size, const char *fmt, long long v, int first) {
    size_t len = strlen(out);
    snprintf(out + len, size - len, first ? fmt : ",%lld", v);
}

static uint64_t pagemap_entry(int fd, char *addr) {
    uint64_t entry = 0;
    if (pread(fd, &entry, sizeof entry, (off_t)((uintptr_t)addr / PAGE) * 8) != sizeof entry)
        return 0;
    return entry;
}

/* userfaultfd(2); without privilege (vm.unprivileged_userfaultfd = 0) only for faults
 * from user mode (UFFD_USER_MODE_ONLY, 5.11+), which is all a scenario's stores are. */
static int open_userfaultfd(void) {
    int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM)
        fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | 1 /* UFFD_USER_MODE_ONLY */);
    return fd;
}

/* ---- io_uring over raw system calls ------------------------------------------------- */
static int ring_setup(struct ring *ring) {
    memset(&ring->p, 0, sizeof ring->p);
    ring->fd = (int)syscall(__NR_io_uring_setup, 4, &ring->p);
    if (ring->fd < 0) return -1;
    ring->sq_size = ring->p.sq_off.array + ring->p.sq_entries * sizeof(unsigned);
    ring->cq_size = ring->p.cq_off.cqes + ring->p.cq_entries * sizeof(struct io_uring_cqe);
    ring->sq = mmap(NULL, ring->sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                    ring->fd, IORING_OFF_SQ_RING);
    ring->cq = mmap(NULL, ring->cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                    ring->fd, IORING_OFF_CQ_RING);
    ring->sqes_size = ring->p.sq_entries * sizeof(struct io_uring_sqe);
    ring->sqes = mmap(NULL, ring->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      ring->fd, IORING_OFF_SQES);
    if (ring->sq == MAP_FAILED || ring->cq == MAP_FAILED || ring->sqes == MAP_FAILED) return -1;
    ring->memfd = (int)syscall(__NR_memfd_create, "cowsim-dma", 0);
    return ring->memfd < 0 ? -1 : 0;
}

static void ring_close(struct ring *ring) {
    if (ring->fd <= 0) return;
    munmap(ring->sq, ring->sq_size);
    munmap(ring->cq, ring->cq_size);
    munmap(ring->sqes, ring->sqes_size);
    close(ring->fd);
    close(ring->memfd);
    memset(ring, 0, sizeof *ring);
}

/* One READ_FIXED (device writes memory) or WRITE_FIXED (device reads memory) of fixed
 * buffer `index` against the ring's memfd at the same offset; returns bytes or -errno. */
static int ring_io(struct ring *ring, int opcode, int index) {
    unsigned *sq_tail = (unsigned *)((char *)ring->sq + ring->p.sq_off.tail);
    unsigned *sq_mask = (unsigned *)((char *)ring->sq + ring->p.sq_off.ring_mask);
    unsigned *sq_array = (unsigned *)((char *)ring->sq + ring->p.sq_off.array);
    unsigned *cq_head = (unsigned *)((char *)ring->cq + ring->p.cq_off.head);
    unsigned *cq_tail = (unsigned *)((char *)ring->cq + ring->p.cq_off.tail);
    unsigned *cq_mask = (unsigned *)((char *)ring->cq + ring->p.cq_off.ring_mask);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)((char *)ring->cq + ring->p.cq_off.cqes);
    unsigned tail = __atomic_load_n(sq_tail, __ATOMIC_ACQUIRE);
    unsigned slot = tail & *sq_mask;
    struct io_uring_sqe *sqe = &((struct io_uring_sqe *)ring->sqes)[slot];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = (unsigned char)opcode;
    sqe->fd = ring->memfd;
    sqe->addr = (uint64_t)(uintptr_t)ring->addrs[index];
    sqe->len = PAGE;
    sqe->off = (uint64_t)index * PAGE;
    sqe->buf_index = (unsigned short)index;
    sq_array[slot] = slot;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, ring->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        return -errno;
    unsigned head = __atomic_load_n(cq_head, __ATOMIC_ACQUIRE);
    if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE)) return -EAGAIN;
    int res = cqes[head & *cq_mask].res;
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

/* ---- one command inside a scenario process ------------------------------------------ */
static void proc_command(char *line, char *out, size_t size) {
    char *argv[16];
    int argc = 0;
    for (char *tok = strtok(line, " \n"); tok && argc < 16; tok = strtok(NULL, " \n"))
        argv[argc++] = tok;
    if (argc < 2) {
        snprintf(out, size, "err %d empty command", EINVAL);
        return;
    }
    static long pages[MAX_PAGES];
    const char *op = argv[0];
    int r = argc > 2 ? atoi(argv[2]) : -1;
    int n = 0;
    long before, after;
    warm();
    snprintf(out, size, "ok");
#define FAIL(what) do { snprintf(out, size, "err %d %s", errno, what); return; } while (0)
#define NEED_PAGES(list) do { \
        n = parse_pages(list, pages); \
        for (int i_ = 0; i_ < n; i_++) \
            if (!check_page(r, pages[i_])) { errno = EINVAL; FAIL("page"); } \
    } while (0)
    if (strcmp(op, "mmap") == 0) {
        long npages = atol(argv[3]);
        int shared = atoi(argv[4]), populate = atoi(argv[5]);
        if (r < 0 || r >= MAX_REGIONS || npages <= 0 || npages > MAX_PAGES) {
            errno = EINVAL;
            FAIL("mmap");
        }
        before = window_start();
        char *addr = mmap(NULL, (size_t)npages * PAGE, PROT_READ | PROT_WRITE,
                          (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
        if (addr == MAP_FAILED) FAIL("mmap");
        madvise(addr, (size_t)npages * PAGE, MADV_NOHUGEPAGE);  /* 4 KiB pages, as modeled */
        if (populate) {  /* MAP_POPULATE after NOHUGEPAGE: fault every page in for write */
            if (madvise(addr, (size_t)npages * PAGE, 23 /* MADV_POPULATE_WRITE */) != 0)
                for (long i = 0; i < npages; i++) ((volatile char *)addr)[i * PAGE] = 0;
        }
        after = faults_taken();
        regions[r].addr = addr;
        regions[r].npages = npages;
        regions[r].mapped = 1;
        memset(regions[r].dontfork, 0, sizeof regions[r].dontfork);
        memset(regions[r].uffd_wp, 0, sizeof regions[r].uffd_wp);
        snprintf(out, size, "ok flt=%ld", after - before);
    } else if (strcmp(op, "munmap") == 0) {
        if (!check_page(r, 0)) { errno = EINVAL; FAIL("region"); }
        if (munmap(regions[r].addr, (size_t)regions[r].npages * PAGE) != 0) FAIL("munmap");
        regions[r].mapped = 0;
    } else if (strcmp(op, "write") == 0) {
        uint32_t value = (uint32_t)strtoul(argv[3], NULL, 0);
        NEED_PAGES(argv[4]);
        char *base = regions[r].addr;
        long faults = 0;  /* counted around each store alone: the loop's own code is not */
        for (int i = 0; i < n; i++) {
            if (regions[r].uffd_wp[pages[i]]) {
                /* the monitor's answer to the write-protect fault this store would take
                 * (handle_userfault: VM_FAULT_RETRY, not counted), given before the store */
                struct uffdio_writeprotect wp = {
                    .range = {.start = (uintptr_t)(base + pages[i] * PAGE), .len = PAGE}, .mode = 0};
                if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) FAIL("UFFDIO_WRITEPROTECT");
                regions[r].uffd_wp[pages[i]] = 0;
            }
            before = window_start();
            *(volatile uint32_t *)(base + pages[i] * PAGE) = value;
            faults += faults_taken() - before;
        }
        snprintf(out, size, "ok flt=%ld", faults);
    } else if (strcmp(op, "read") == 0) {
        static uint32_t values[MAX_PAGES];
        NEED_PAGES(argv[3]);
        char *base = regions[r].addr;
        memset(values, 0, sizeof values);  /* our own pages' faults before the window */
        long faults = 0;
        for (int i = 0; i < n; i++) {
            before = window_start();
            values[i] = *(volatile uint32_t *)(base + pages[i] * PAGE);
            faults += faults_taken() - before;
        }
        snprintf(out, size, "ok flt=%ld val=", faults);
        for (int i = 0; i < n; i++) append(out, size, "%lld", values[i], i == 0);
    } else if (strcmp(op, "peek") == 0 || strcmp(op, "pm") == 0) {
        int peek = strcmp(op, "peek") == 0;
        if (!peek) {
            if (r < 0 || r >= MAX_REGIONS || !regions[r].mapped) { snprintf(out, size, "ok pm=none"); return; }
            n = (int)regions[r].npages;
            for (int i = 0; i < n; i++) pages[i] = i;
        } else {
            NEED_PAGES(argv[3]);
        }
        int pm = open("/proc/self/pagemap", O_RDONLY);
        int mem = peek ? open("/proc/self/mem", O_RDONLY) : -1;
        if (pm < 0 || (peek && mem < 0)) FAIL("open /proc/self");
        snprintf(out, size, peek ? "ok val=" : "ok pm=");
        for (int i = 0; i < n; i++) {
            char *addr = regions[r].addr + pages[i] * PAGE;
            uint64_t entry = pagemap_entry(pm, addr);
            if (!peek) {
                size_t len = strlen(out);
                snprintf(out + len, size - len, i ? ",%llx" : "%llx", (unsigned long long)entry);
                continue;
            }
            uint32_t value = 0;
            if (entry & (3ULL << 62))  /* present or swapped: what a load would see */
                if (pread(mem, &value, sizeof value, (off_t)(uintptr_t)addr) != sizeof value) value = 0;
            append(out, size, "%lld", value, i == 0);
        }
        close(pm);
        if (mem >= 0) close(mem);
    } else if (strcmp(op, "fork") == 0) {
        int child = atoi(argv[2]);
        pid_t pid = fork();
        if (pid < 0) FAIL("fork");
        if (pid == 0) {
            for (int i = 0; i < MAX_REGIONS; i++)  /* VM_DONTCOPY regions are not inherited */
                if (regions[i].mapped && regions[i].dontfork[0]) regions[i].mapped = 0;
            snprintf(out, size, "child %d", child);  /* the caller switches to CHILD's pipes */
            return;
        }
    } else if (strcmp(op, "mprotect") == 0) {
        int prot = atoi(argv[3]);
        if (!check_page(r, 0)) { errno = EINVAL; FAIL("region"); }
        int flags = (prot & 1 ? PROT_READ : 0) | (prot & 2 ? PROT_WRITE : 0);
        before = window_start();
        if (mprotect(regions[r].addr, (size_t)regions[r].npages * PAGE, flags) != 0) FAIL("mprotect");
        after = faults_taken();
        snprintf(out, size, "ok flt=%ld", after - before);
    } else if (strcmp(op, "madvise") == 0) {
        int advice = atoi(argv[3]);
        NEED_PAGES(argv[4]);
        before = window_start();
        for (int i = 0; i < n; i++)
            if (madvise(regions[r].addr + pages[i] * PAGE, PAGE, advice) != 0) FAIL("madvise");
        after = faults_taken();
        for (int i = 0; i < n; i++) {
            if (advice == MADV_DONTFORK) regions[r].dontfork[pages[i]] = 1;
            if (advice == MADV_DOFORK) regions[r].dontfork[pages[i]] = 0;
        }
        snprintf(out, size, "ok flt=%ld", after - before);
    } else if (strcmp(op, "clearrefs") == 0) {
        int fd = open("/proc/self/clear_refs", O_WRONLY);
        if (fd < 0 || write(fd, "4", 1) != 1) FAIL("clear_refs");
        close(fd);
    } else if (strcmp(op, "vmsplice") == 0) {
        int pipe_index = atoi(argv[3]);
        static struct iovec iov[MAX_PAGES];
        NEED_PAGES(argv[4]);
        if (pipe_index < 0 || pipe_index >= npipes) { errno = EINVAL; FAIL("pipe"); }
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = regions[r].addr + pages[i] * PAGE;
            iov[i].iov_len = PAGE;
        }
        before = window_start();
        ssize_t done = vmsplice(data_w[pipe_index], iov, (unsigned long)n, 0);
        after = faults_taken();
        if (done != (ssize_t)n * PAGE) FAIL("vmsplice");
        snprintf(out, size, "ok flt=%ld", after - before);
    } else if (strcmp(op, "uring") == 0) {
        int id = atoi(argv[3]);
        static struct iovec iov[MAX_PAGES];
        NEED_PAGES(argv[4]);
        if (id < 0 || id >= MAX_IDS || rings[id].fd > 0) { errno = EINVAL; FAIL("id"); }
        struct ring *ring = &rings[id];
        if (ring_setup(ring) != 0) FAIL("io_uring_setup");
        if (ftruncate(ring->memfd, (off_t)n * PAGE) != 0) FAIL("ftruncate");
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = ring->addrs[i] = regions[r].addr + pages[i] * PAGE;
            iov[i].iov_len = PAGE;
        }
        ring->npages = n;
        before = window_start();
        long rc = syscall(__NR_io_uring_register, ring->fd, IORING_REGISTER_BUFFERS, iov, n);
        after = faults_taken();
        if (rc != 0) { int e = errno; ring_close(ring); errno = e; FAIL("IORING_REGISTER_BUFFERS"); }
        snprintf(out, size, "ok flt=%ld", after - before);
    } else if (strcmp(op, "dmaw") == 0 || strcmp(op, "dmar") == 0) {
        int id = atoi(argv[2]);
        int device_writes = strcmp(op, "dmaw") == 0;
        if (id < 0 || id >= MAX_IDS || rings[id].fd <= 0) { errno = EINVAL; FAIL("id"); }
        struct ring *ring = &rings[id];
        if (device_writes) {  /* the "device" data: VALUE at the start of each page of the memfd */
            uint32_t value = (uint32_t)strtoul(argv[3], NULL, 0);
            static char page[PAGE];
            memset(page, 0, sizeof page);
            memcpy(page, &value, sizeof value);
            for (long i = 0; i < ring->npages; i++)
                if (pwrite(ring->memfd, page, PAGE, (off_t)i * PAGE) != PAGE) FAIL("pwrite memfd");
        }
        for (long i = 0; i < ring->npages; i++) {
            int res = ring_io(ring, device_writes ? IORING_OP_READ_FIXED : IORING_OP_WRITE_FIXED, (int)i);
            if (res != PAGE) { errno = res < 0 ? -res : EIO; FAIL(device_writes ? "READ_FIXED" : "WRITE_FIXED"); }
        }
        if (!device_writes) {
            snprintf(out, size, "ok val=");
            for (long i = 0; i < ring->npages; i++) {
                uint32_t value = 0;
                if (pread(ring->memfd, &value, sizeof value, (off_t)i * PAGE) != sizeof value) FAIL("pread memfd");
                append(out, size, "%lld", value, i == 0);
            }
        }
    } else if (strcmp(op, "release") == 0) {
        int id = atoi(argv[2]);
        if (id < 0 || id >= MAX_IDS || rings[id].fd <= 0) { errno = EINVAL; FAIL("id"); }
        ring_close(&rings[id]);
    } else if (strcmp(op, "odread") == 0 || strcmp(op, "odwrite") == 0) {
        int device_writes = strcmp(op, "odread") == 0;
        uint32_t value = device_writes ? (uint32_t)strtoul(argv[3], NULL, 0) : 0;
        NEED_PAGES(argv[device_writes ? 4 : 3]);
        char path[4200];
        snprintf(path, sizeof path, "%s/cowsim-vh-odirect-%d", odirect_dir, (int)getpid());
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) FAIL("open odirect file");
        static char page[PAGE];
        memset(page, 0, sizeof page);
        memcpy(page, &value, sizeof value);
        for (int i = 0; i < n; i++)
            if (pwrite(fd, page, PAGE, (off_t)i * PAGE) != PAGE) { close(fd); unlink(path); FAIL("pwrite"); }
        fsync(fd);
        int dfd = open(path, O_RDWR | O_DIRECT);
        unlink(path);
        if (dfd < 0) { close(fd); FAIL("open O_DIRECT"); }
        before = window_start();
        for (int i = 0; i < n; i++) {
            char *addr = regions[r].addr + pages[i] * PAGE;
            ssize_t done = device_writes ? pread(dfd, addr, PAGE, (off_t)i * PAGE)
                                         : pwrite(dfd, addr, PAGE, (off_t)i * PAGE);
            if (done != PAGE) { close(dfd); close(fd); FAIL(device_writes ? "O_DIRECT read" : "O_DIRECT write"); }
        }
        after = faults_taken();
        snprintf(out, size, "ok flt=%ld", after - before);
        if (!device_writes) {
            size_t len = strlen(out);
            snprintf(out + len, size - len, " val=");
            for (int i = 0; i < n; i++) {
                uint32_t seen = 0;
                if (pread(fd, &seen, sizeof seen, (off_t)i * PAGE) != sizeof seen) seen = 0;
                append(out, size, "%lld", seen, i == 0);
            }
        }
        close(dfd);
        close(fd);
    } else if (strcmp(op, "uffdreg") == 0) {
        if (!check_page(r, 0)) { errno = EINVAL; FAIL("region"); }
        if (uffd < 0) {
            uffd = open_userfaultfd();
            if (uffd < 0) FAIL("userfaultfd");
            struct uffdio_api api = {.api = UFFD_API, .features = 0};
            if (ioctl(uffd, UFFDIO_API, &api) != 0) FAIL("UFFDIO_API");
        }
        struct uffdio_register reg = {
            .range = {.start = (uintptr_t)regions[r].addr, .len = (uint64_t)regions[r].npages * PAGE},
            .mode = UFFDIO_REGISTER_MODE_WP};
        if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) FAIL("UFFDIO_REGISTER");
    } else if (strcmp(op, "uffdwp") == 0) {
        int protect = atoi(argv[3]);
        NEED_PAGES(argv[4]);
        if (uffd < 0) { errno = EINVAL; FAIL("uffd"); }
        before = window_start();
        for (int i = 0; i < n; i++) {
            struct uffdio_writeprotect wp = {
                .range = {.start = (uintptr_t)(regions[r].addr + pages[i] * PAGE), .len = PAGE},
                .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
            if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) FAIL("UFFDIO_WRITEPROTECT");
            regions[r].uffd_wp[pages[i]] = (unsigned char)(protect != 0);
        }
        after = faults_taken();
        snprintf(out, size, "ok flt=%ld", after - before);
    } else {
        errno = EINVAL;
        FAIL("unknown op");
    }
#undef FAIL
#undef NEED_PAGES
}

static ssize_t read_line(int fd, char *buf, size_t size) {
    size_t len = 0;
    while (len + 1 < size) {
        ssize_t got = read(fd, buf + len, 1);
        if (got <= 0) return got < 0 ? -1 : (ssize_t)len ? (ssize_t)len : -1;
        if (buf[len++] == '\n') break;
    }
    buf[len] = 0;
    return (ssize_t)len;
}

static void write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t put = write(fd, buf, len);
        if (put <= 0) { if (errno == EINTR) continue; return; }
        buf += put;
        len -= (size_t)put;
    }
}

static void __attribute__((noreturn)) proc_loop(int self) {
    static char line[LINE], out[LINE];
    cpu_set_t one;  /* every process on CPU 0: the per-CPU LRU batches of the model's cpu 0 */
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    sched_setaffinity(0, sizeof one, &one);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setpgid(0, 0);  /* one process group per scenario process tree: end_scenario kills it */
    for (int i = 0; i < nprocs; i++) {  /* only the driver may hold these: EOF ends us */
        close(cmd_w[i]);
        close(rep_r[i]);
    }
    for (int i = 0; i < npipes; i++) close(data_r[i]);
    prefault_self();
    for (;;) {
        if (read_line(cmd_r[self], line, sizeof line) < 0) _exit(0);
        if (strncmp(line, "exit", 4) == 0) {
            write_all(rep_w[self], "ok\n", 3);
            _exit(0);
        }
        proc_command(line, out, sizeof out);
        if (strncmp(out, "child ", 6) == 0) {  /* this is the fork's child now */
            self = atoi(out + 6);
            prctl(PR_SET_PDEATHSIG, 0);  /* a fork's child outlives its parent, as in the scenario */
            prefault_self();
            snprintf(out, sizeof out, "pid %d\n", (int)getpid());
            write_all(rep_w[self], out, strlen(out));
            continue;
        }
        size_t len = strlen(out);
        out[len++] = '\n';
        write_all(rep_w[self], out, len);
    }
}

/* ---- the driver ----------------------------------------------------------------------- */
static int has(const char *caps_line, const char *feature) {
    char key[64];
    snprintf(key, sizeof key, " %s=1", feature);
    return strstr(caps_line, key) != NULL;
}

static char caps[1024];

static void probe_caps(void) {
    char *page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    page[0] = 1;
    int pm = open("/proc/self/pagemap", O_RDONLY);
    uint64_t entry = pm >= 0 ? pagemap_entry(pm, page) : 0;
    int pfn = (entry & ((1ULL << 55) - 1)) != 0;
    int soft_dirty = 0;
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    if (fd >= 0 && pm >= 0 && write(fd, "4", 1) == 1) {
        page[0] = 2;
        soft_dirty = (pagemap_entry(pm, page) >> 55) & 1;
    }
    if (fd >= 0) close(fd);
    if (pm >= 0) close(pm);
    munmap(page, PAGE);
    int swap = 0;
    FILE *swaps = fopen("/proc/swaps", "r");
    if (swaps) {
        char line[512];
        int lines = 0;
        while (fgets(line, sizeof line, swaps)) lines++;
        swap = lines > 1;
        fclose(swaps);
    }
    struct ring ring;
    memset(&ring, 0, sizeof ring);
    int io_uring = ring_setup(&ring) == 0;
    if (ring.fd > 0) ring_close(&ring);
    int odirect = 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/cowsim-vh-probe-%d", odirect_dir, (int)getpid());
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0600);
    if (fd >= 0) {
        void *buf = NULL;
        if (posix_memalign(&buf, PAGE, PAGE) == 0) {
            memset(buf, 0, PAGE);
            odirect = pwrite(fd, buf, PAGE, 0) == PAGE && pread(fd, buf, PAGE, 0) == PAGE;
            free(buf);
        }
        close(fd);
        unlink(path);
    }
    static char node_page[PAGE] __attribute__((aligned(PAGE)));
    node_page[0] = 1;
    void *addr = node_page;
    int node = 0, status = 0;
    int drain = syscall(__NR_move_pages, 0, 1, &addr, &node, &status, 0) == 0;
    int uffd_wp = 0;
    int u = open_userfaultfd();
    if (u >= 0) {
        struct uffdio_api api = {.api = UFFD_API, .features = 0};
        uffd_wp = ioctl(u, UFFDIO_API, &api) == 0 && (api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP);
        close(u);
    }
    int gup_test = access("/sys/kernel/debug/gup_test", F_OK) == 0;
    snprintf(caps, sizeof caps, "caps pfn=%d soft_dirty=%d swap=%d io_uring=%d odirect=%d "
             "drain=%d uffd_wp=%d gup_test=%d none=0", pfn, soft_dirty, swap, io_uring, odirect,
             drain, uffd_wp, gup_test);
}

static pid_t groups[MAX_PROCS];
static int ngroups;

static void end_scenario(void) {
    for (int i = 0; i < nprocs; i++) {  /* EOF on every command pipe: each process exits */
        close(cmd_w[i]);
        close(cmd_r[i]);
        close(rep_r[i]);
        close(rep_w[i]);
        alive[i] = 0;
        pids[i] = 0;
    }
    for (int i = 0; i < npipes; i++) {
        close(data_r[i]);
        close(data_w[i]);
    }
    for (int i = 0; i < ngroups; i++) kill(-groups[i], SIGKILL);  /* and whatever hangs */
    ngroups = 0;
    /* every scenario process is our child or, orphaned, reparented to us (subreaper) */
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {}
    nprocs = npipes = nids = 0;
}

static int wait_readable(int fd, int timeout_ms) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return poll(&pfd, 1, timeout_ms) > 0;
}

static int ask(int proc, const char *command, char *reply, size_t size) {
    write_all(cmd_w[proc], command, strlen(command));
    write_all(cmd_w[proc], "\n", 1);
    if (!wait_readable(rep_r[proc], REPLY_TIMEOUT_MS)) { snprintf(reply, size, "err %d timeout", ETIMEDOUT); return -1; }
    if (read_line(rep_r[proc], reply, size) < 0) {
        snprintf(reply, size, "err %d process died", EPIPE);
        return -1;
    }
    reply[strcspn(reply, "\n")] = 0;
    return 0;
}

static void start_proc(int index) {
    pid_t pid = fork();
    if (pid == 0) proc_loop(index);
    pids[index] = pid;
    alive[index] = pid > 0;
    if (pid > 0) {
        setpgid(pid, pid);
        groups[ngroups++] = pid;
    }
}

int main(int argc, char **argv) {
    static char line[LINE], reply[LINE];
    if (argc > 1) odirect_dir = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    probe_caps();
    struct utsname uts;
    uname(&uts);
    printf("%s\nuname %s\n", caps, uts.release);
    long skipped_at = -1;
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "scenario ", 9) == 0) {
            end_scenario();
            skipped_at = -1;
            sscanf(line + 9, "%d %d %d", &nprocs, &npipes, &nids);
            if (nprocs > MAX_PROCS || npipes > MAX_PIPES || nids > MAX_IDS || nprocs < 0 ||
                npipes < 0 || nids < 0) {
                printf("error scenario too large\n");
                return 2;
            }
            for (int i = 0; i < nprocs; i++) {
                int c[2], p[2];
                if (pipe(c) != 0 || pipe(p) != 0) { printf("error pipe %d\n", errno); return 1; }
                cmd_r[i] = c[0], cmd_w[i] = c[1], rep_r[i] = p[0], rep_w[i] = p[1];
            }
            for (int i = 0; i < npipes; i++) {
                int d[2];
                if (pipe(d) != 0) { printf("error pipe %d\n", errno); return 1; }
                fcntl(d[1], F_SETPIPE_SZ, 1 << 20);
                data_r[i] = d[0], data_w[i] = d[1];
            }
            continue;
        }
        if (strcmp(line, "end") == 0) { end_scenario(); continue; }
        if (strncmp(line, "cmd ", 4) != 0) continue;
        long seq;
        char flags[8], req[256];
        int offset = 0;
        if (sscanf(line + 4, "%ld %7s %255s %n", &seq, flags, req, &offset) < 3) continue;
        char *command = line + 4 + offset;
        if (skipped_at >= 0) { printf("res %ld after %ld\n", seq, skipped_at); continue; }
        char *missing = NULL;
        if (strcmp(req, "-") != 0)
            for (char *f = strtok(req, ","); f; f = strtok(NULL, ","))
                if (!has(caps, f)) { missing = f; break; }
        if (missing) {
            printf("res %ld skip %s\n", seq, missing);
            if (strchr(flags, 's')) skipped_at = seq;
            continue;
        }
        char op[32] = {0};
        int a = -1, b = -1;
        sscanf(command, "%31s %d %d", op, &a, &b);
        if (strcmp(op, "pipepeek") == 0) {
            if (a < 0 || a >= npipes) { printf("res %ld err %d pipe\n", seq, EINVAL); continue; }
            int scratch[2];
            if (pipe(scratch) != 0) { printf("res %ld err %d pipe\n", seq, errno); continue; }
            fcntl(scratch[1], F_SETPIPE_SZ, 1 << 20);
            ssize_t copied = tee(data_r[a], scratch[1], 1 << 20, SPLICE_F_NONBLOCK);
            close(scratch[1]);
            printf("res %ld ok val=", seq);
            static char page[PAGE];
            for (ssize_t at = 0; copied > 0 && at < copied; at += PAGE) {
                ssize_t got = 0;
                while (got < PAGE) {
                    ssize_t more = read(scratch[0], page + got, (size_t)(PAGE - got));
                    if (more <= 0) break;
                    got += more;
                }
                uint32_t value;
                memcpy(&value, page, sizeof value);
                printf(at ? ",%u" : "%u", value);
            }
            close(scratch[0]);
            printf("\n");
            continue;
        }
        if (strcmp(op, "drain") == 0) {
            static char node_page[PAGE] __attribute__((aligned(PAGE)));
            node_page[0] = 1;
            void *addr = node_page;
            int node = 0, status = 0;
            if (syscall(__NR_move_pages, 0, 1, &addr, &node, &status, 0) != 0)
                printf("res %ld err %d move_pages\n", seq, errno);
            else
                printf("res %ld ok\n", seq);
            continue;
        }
        if (a < 0 || a >= nprocs) { printf("res %ld err %d process\n", seq, EINVAL); continue; }
        if (!alive[a]) {
            if (strcmp(op, "mmap") != 0) { printf("res %ld err %d no such process\n", seq, ESRCH); continue; }
            start_proc(a);
        }
        if (strcmp(op, "fork") == 0) {
            if (b < 0 || b >= nprocs || alive[b]) { printf("res %ld err %d child\n", seq, EINVAL); continue; }
        }
        int pidfd = -1;
        if (strcmp(op, "exit") == 0) pidfd = (int)syscall(__NR_pidfd_open, pids[a], 0);
        ask(a, command, reply, sizeof reply);
        if (strcmp(op, "fork") == 0 && strncmp(reply, "ok", 2) == 0) {
            static char hello[128];  /* the child's first line: its pid */
            alive[b] = 1;
            if (wait_readable(rep_r[b], REPLY_TIMEOUT_MS) && read_line(rep_r[b], hello, sizeof hello) > 0)
                pids[b] = (pid_t)atol(hello + 4);
        }
        if (strcmp(op, "exit") == 0 && strncmp(reply, "ok", 2) == 0) {
            /* the next step must see its mm gone: wait until it is a zombie (or reaped) */
            alive[a] = 0;
            if (pidfd >= 0) {
                wait_readable(pidfd, REPLY_TIMEOUT_MS);
                close(pidfd);
            } else {
                for (int tries = 0; tries < 4000 && kill(pids[a], 0) == 0; tries++) {
                    char stat[64], state[256] = {0};
                    snprintf(stat, sizeof stat, "/proc/%d/stat", (int)pids[a]);
                    FILE *f = fopen(stat, "r");
                    if (!f) break;
                    int got = fgets(state, sizeof state, f) != NULL;
                    fclose(f);
                    char *close_paren = got ? strrchr(state, ')') : NULL;
                    if (close_paren && close_paren[2] == 'Z') break;
                    usleep(1000);
                }
            }
        }
        printf("res %ld %s\n", seq, reply);
    }
    end_scenario();
    printf("done\n");
    return 0;
}
