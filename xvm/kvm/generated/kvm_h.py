"""Generated from <linux/kvm.h> by tools/gen_kvm_bindings.py. Do not edit."""
from ioctl_opt import IOC, IOC_NONE, IOC_READ, IOC_WRITE

CDEF = r"""
typedef signed char __s8;
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
 typedef signed long long __s64;
 typedef unsigned long long __u64;
typedef struct {
 unsigned long fds_bits[16];
} __kernel_fd_set;
typedef void (*__kernel_sighandler_t)(int);
typedef int __kernel_key_t;
typedef int __kernel_mqd_t;
typedef unsigned short __kernel_old_uid_t;
typedef unsigned short __kernel_old_gid_t;
typedef unsigned long __kernel_old_dev_t;
typedef long __kernel_long_t;
typedef unsigned long __kernel_ulong_t;
typedef __kernel_ulong_t __kernel_ino_t;
typedef unsigned int __kernel_mode_t;
typedef int __kernel_pid_t;
typedef int __kernel_ipc_pid_t;
typedef unsigned int __kernel_uid_t;
typedef unsigned int __kernel_gid_t;
typedef __kernel_long_t __kernel_suseconds_t;
typedef int __kernel_daddr_t;
typedef unsigned int __kernel_uid32_t;
typedef unsigned int __kernel_gid32_t;
typedef __kernel_ulong_t __kernel_size_t;
typedef __kernel_long_t __kernel_ssize_t;
typedef __kernel_long_t __kernel_ptrdiff_t;
typedef struct {
 int val[2];
} __kernel_fsid_t;
typedef __kernel_long_t __kernel_off_t;
typedef long long __kernel_loff_t;
typedef __kernel_long_t __kernel_old_time_t;
typedef __kernel_long_t __kernel_time_t;
typedef long long __kernel_time64_t;
typedef __kernel_long_t __kernel_clock_t;
typedef int __kernel_timer_t;
typedef int __kernel_clockid_t;
typedef char * __kernel_caddr_t;
typedef unsigned short __kernel_uid16_t;
typedef unsigned short __kernel_gid16_t;
typedef __u16 __le16;
typedef __u16 __be16;
typedef __u32 __le32;
typedef __u32 __be32;
typedef __u64 __le64;
typedef __u64 __be64;
typedef __u16 __sum16;
typedef __u32 __wsum;
typedef unsigned __poll_t;
struct kvm_memory_alias {
 __u32 slot;
 __u32 flags;
 __u64 guest_phys_addr;
 __u64 memory_size;
 __u64 target_phys_addr;
};
struct kvm_pic_state {
 __u8 last_irr;
 __u8 irr;
 __u8 imr;
 __u8 isr;
 __u8 priority_add;
 __u8 irq_base;
 __u8 read_reg_select;
 __u8 poll;
 __u8 special_mask;
 __u8 init_state;
 __u8 auto_eoi;
 __u8 rotate_on_auto_eoi;
 __u8 special_fully_nested_mode;
 __u8 init4;
 __u8 elcr;
 __u8 elcr_mask;
};
struct kvm_ioapic_state {
 __u64 base_address;
 __u32 ioregsel;
 __u32 id;
 __u32 irr;
 __u32 pad;
 union {
  __u64 bits;
  struct {
   __u8 vector;
   __u8 delivery_mode:3;
   __u8 dest_mode:1;
   __u8 delivery_status:1;
   __u8 polarity:1;
   __u8 remote_irr:1;
   __u8 trig_mode:1;
   __u8 mask:1;
   __u8 reserve:7;
   __u8 reserved[4];
   __u8 dest_id;
  } fields;
 } redirtbl[24];
};
struct kvm_regs {
 __u64 rax, rbx, rcx, rdx;
 __u64 rsi, rdi, rsp, rbp;
 __u64 r8, r9, r10, r11;
 __u64 r12, r13, r14, r15;
 __u64 rip, rflags;
};
struct kvm_lapic_state {
 char regs[1024];
};
struct kvm_segment {
 __u64 base;
 __u32 limit;
 __u16 selector;
 __u8 type;
 __u8 present, dpl, db, s, l, g, avl;
 __u8 unusable;
 __u8 padding;
};
struct kvm_dtable {
 __u64 base;
 __u16 limit;
 __u16 padding[3];
};
struct kvm_sregs {
 struct kvm_segment cs, ds, es, fs, gs, ss;
 struct kvm_segment tr, ldt;
 struct kvm_dtable gdt, idt;
 __u64 cr0, cr2, cr3, cr4, cr8;
 __u64 efer;
 __u64 apic_base;
 __u64 interrupt_bitmap[4];
};
struct kvm_sregs2 {
 struct kvm_segment cs, ds, es, fs, gs, ss;
 struct kvm_segment tr, ldt;
 struct kvm_dtable gdt, idt;
 __u64 cr0, cr2, cr3, cr4, cr8;
 __u64 efer;
 __u64 apic_base;
 __u64 flags;
 __u64 pdptrs[4];
};
struct kvm_fpu {
 __u8 fpr[8][16];
 __u16 fcw;
 __u16 fsw;
 __u8 ftwx;
 __u8 pad1;
 __u16 last_opcode;
 __u64 last_ip;
 __u64 last_dp;
 __u8 xmm[16][16];
 __u32 mxcsr;
 __u32 pad2;
};
struct kvm_msr_entry {
 __u32 index;
 __u32 reserved;
 __u64 data;
};
struct kvm_msrs {
 __u32 nmsrs;
 __u32 pad;
 struct kvm_msr_entry entries[];
};
struct kvm_msr_list {
 __u32 nmsrs;
 __u32 indices[];
};
struct kvm_msr_filter_range {
 __u32 flags;
 __u32 nmsrs;
 __u32 base;
 __u8 *bitmap;
};
struct kvm_msr_filter {
 __u32 flags;
 struct kvm_msr_filter_range ranges[16];
};
struct kvm_cpuid_entry {
 __u32 function;
 __u32 eax;
 __u32 ebx;
 __u32 ecx;
 __u32 edx;
 __u32 padding;
};
struct kvm_cpuid {
 __u32 nent;
 __u32 padding;
 struct kvm_cpuid_entry entries[];
};
struct kvm_cpuid_entry2 {
 __u32 function;
 __u32 index;
 __u32 flags;
 __u32 eax;
 __u32 ebx;
 __u32 ecx;
 __u32 edx;
 __u32 padding[3];
};
struct kvm_cpuid2 {
 __u32 nent;
 __u32 padding;
 struct kvm_cpuid_entry2 entries[];
};
struct kvm_pit_channel_state {
 __u32 count;
 __u16 latched_count;
 __u8 count_latched;
 __u8 status_latched;
 __u8 status;
 __u8 read_state;
 __u8 write_state;
 __u8 write_latch;
 __u8 rw_mode;
 __u8 mode;
 __u8 bcd;
 __u8 gate;
 __s64 count_load_time;
};
struct kvm_debug_exit_arch {
 __u32 exception;
 __u32 pad;
 __u64 pc;
 __u64 dr6;
 __u64 dr7;
};
struct kvm_guest_debug_arch {
 __u64 debugreg[8];
};
struct kvm_pit_state {
 struct kvm_pit_channel_state channels[3];
};
struct kvm_pit_state2 {
 struct kvm_pit_channel_state channels[3];
 __u32 flags;
 __u32 reserved[9];
};
struct kvm_reinject_control {
 __u8 pit_reinject;
 __u8 reserved[31];
};
struct kvm_vcpu_events {
 struct {
  __u8 injected;
  __u8 nr;
  __u8 has_error_code;
  __u8 pending;
  __u32 error_code;
 } exception;
 struct {
  __u8 injected;
  __u8 nr;
  __u8 soft;
  __u8 shadow;
 } interrupt;
 struct {
  __u8 injected;
  __u8 pending;
  __u8 masked;
  __u8 pad;
 } nmi;
 __u32 sipi_vector;
 __u32 flags;
 struct {
  __u8 smm;
  __u8 pending;
  __u8 smm_inside_nmi;
  __u8 latched_init;
 } smi;
 struct {
  __u8 pending;
 } triple_fault;
 __u8 reserved[26];
 __u8 exception_has_payload;
 __u64 exception_payload;
};
struct kvm_debugregs {
 __u64 db[4];
 __u64 dr6;
 __u64 dr7;
 __u64 flags;
 __u64 reserved[9];
};
struct kvm_xsave {
 __u32 region[1024];
 __u32 extra[];
};
struct kvm_xcr {
 __u32 xcr;
 __u32 reserved;
 __u64 value;
};
struct kvm_xcrs {
 __u32 nr_xcrs;
 __u32 flags;
 struct kvm_xcr xcrs[16];
 __u64 padding[16];
};
struct kvm_sync_regs {
 struct kvm_regs regs;
 struct kvm_sregs sregs;
 struct kvm_vcpu_events events;
};
struct kvm_vmx_nested_state_data {
 __u8 vmcs12[4096];
 __u8 shadow_vmcs12[4096];
};
struct kvm_vmx_nested_state_hdr {
 __u64 vmxon_pa;
 __u64 vmcs12_pa;
 struct {
  __u16 flags;
 } smm;
 __u16 pad;
 __u32 flags;
 __u64 preemption_timer_deadline;
};
struct kvm_svm_nested_state_data {
 __u8 vmcb12[4096];
};
struct kvm_svm_nested_state_hdr {
 __u64 vmcb_pa;
};
struct kvm_nested_state {
 __u16 flags;
 __u16 format;
 __u32 size;
 union {
  struct kvm_vmx_nested_state_hdr vmx;
  struct kvm_svm_nested_state_hdr svm;
  __u8 pad[120];
 } hdr;
 __u8 data[];
};
struct kvm_pmu_event_filter {
 __u32 action;
 __u32 nevents;
 __u32 fixed_counter_bitmap;
 __u32 flags;
 __u32 pad[4];
 __u64 events[];
};
struct kvm_user_trace_setup {
 __u32 buf_size;
 __u32 buf_nr;
};
struct kvm_breakpoint {
 __u32 enabled;
 __u32 padding;
 __u64 address;
};
struct kvm_debug_guest {
 __u32 enabled;
 __u32 pad;
 struct kvm_breakpoint breakpoints[4];
 __u32 singlestep;
};
struct kvm_memory_region {
 __u32 slot;
 __u32 flags;
 __u64 guest_phys_addr;
 __u64 memory_size;
};
struct kvm_userspace_memory_region {
 __u32 slot;
 __u32 flags;
 __u64 guest_phys_addr;
 __u64 memory_size;
 __u64 userspace_addr;
};
struct kvm_irq_level {
 union {
  __u32 irq;
  __s32 status;
 };
 __u32 level;
};
struct kvm_irqchip {
 __u32 chip_id;
 __u32 pad;
        union {
  char dummy[512];
  struct kvm_pic_state pic;
  struct kvm_ioapic_state ioapic;
 } chip;
};
struct kvm_pit_config {
 __u32 flags;
 __u32 pad[15];
};
struct kvm_s390_skeys {
 __u64 start_gfn;
 __u64 count;
 __u64 skeydata_addr;
 __u32 flags;
 __u32 reserved[9];
};
struct kvm_s390_cmma_log {
 __u64 start_gfn;
 __u32 count;
 __u32 flags;
 union {
  __u64 remaining;
  __u64 mask;
 };
 __u64 values;
};
struct kvm_hyperv_exit {
 __u32 type;
 __u32 pad1;
 union {
  struct {
   __u32 msr;
   __u32 pad2;
   __u64 control;
   __u64 evt_page;
   __u64 msg_page;
  } synic;
  struct {
   __u64 input;
   __u64 result;
   __u64 params[2];
  } hcall;
  struct {
   __u32 msr;
   __u32 pad2;
   __u64 control;
   __u64 status;
   __u64 send_page;
   __u64 recv_page;
   __u64 pending_page;
  } syndbg;
 } u;
};
struct kvm_xen_exit {
 __u32 type;
 union {
  struct {
   __u32 longmode;
   __u32 cpl;
   __u64 input;
   __u64 result;
   __u64 params[6];
  } hcall;
 } u;
};
struct kvm_run {
 __u8 request_interrupt_window;
 __u8 immediate_exit;
 __u8 padding1[6];
 __u32 exit_reason;
 __u8 ready_for_interrupt_injection;
 __u8 if_flag;
 __u16 flags;
 __u64 cr8;
 __u64 apic_base;
 union {
  struct {
   __u64 hardware_exit_reason;
  } hw;
  struct {
   __u64 hardware_entry_failure_reason;
   __u32 cpu;
  } fail_entry;
  struct {
   __u32 exception;
   __u32 error_code;
  } ex;
  struct {
   __u8 direction;
   __u8 size;
   __u16 port;
   __u32 count;
   __u64 data_offset;
  } io;
  struct {
   struct kvm_debug_exit_arch arch;
  } debug;
  struct {
   __u64 phys_addr;
   __u8 data[8];
   __u32 len;
   __u8 is_write;
  } mmio;
  struct {
   __u64 nr;
   __u64 args[6];
   __u64 ret;
   __u32 longmode;
   __u32 pad;
  } hypercall;
  struct {
   __u64 rip;
   __u32 is_write;
   __u32 pad;
  } tpr_access;
  struct {
   __u8 icptcode;
   __u16 ipa;
   __u32 ipb;
  } s390_sieic;
  __u64 s390_reset_flags;
  struct {
   __u64 trans_exc_code;
   __u32 pgm_code;
  } s390_ucontrol;
  struct {
   __u32 dcrn;
   __u32 data;
   __u8 is_write;
  } dcr;
  struct {
   __u32 suberror;
   __u32 ndata;
   __u64 data[16];
  } internal;
  struct {
   __u32 suberror;
   __u32 ndata;
   __u64 flags;
   union {
    struct {
     __u8 insn_size;
     __u8 insn_bytes[15];
    };
   };
  } emulation_failure;
  struct {
   __u64 gprs[32];
  } osi;
  struct {
   __u64 nr;
   __u64 ret;
   __u64 args[9];
  } papr_hcall;
  struct {
   __u16 subchannel_id;
   __u16 subchannel_nr;
   __u32 io_int_parm;
   __u32 io_int_word;
   __u32 ipb;
   __u8 dequeued;
  } s390_tsch;
  struct {
   __u32 epr;
  } epr;
  struct {
   __u32 type;
   __u32 ndata;
   union {
    __u64 flags;
    __u64 data[16];
   };
  } system_event;
  struct {
   __u64 addr;
   __u8 ar;
   __u8 reserved;
   __u8 fc;
   __u8 sel1;
   __u16 sel2;
  } s390_stsi;
  struct {
   __u8 vector;
  } eoi;
  struct kvm_hyperv_exit hyperv;
  struct {
   __u64 esr_iss;
   __u64 fault_ipa;
  } arm_nisv;
  struct {
   __u8 error;
   __u8 pad[7];
   __u32 reason;
   __u32 index;
   __u64 data;
  } msr;
  struct kvm_xen_exit xen;
  struct {
   unsigned long extension_id;
   unsigned long function_id;
   unsigned long args[6];
   unsigned long ret[2];
  } riscv_sbi;
  struct {
   unsigned long csr_num;
   unsigned long new_value;
   unsigned long write_mask;
   unsigned long ret_value;
  } riscv_csr;
  struct {
   __u32 flags;
  } notify;
  char padding[256];
 };
 __u64 kvm_valid_regs;
 __u64 kvm_dirty_regs;
 union {
  struct kvm_sync_regs regs;
  char padding[2048];
 } s;
};
struct kvm_coalesced_mmio_zone {
 __u64 addr;
 __u32 size;
 union {
  __u32 pad;
  __u32 pio;
 };
};
struct kvm_coalesced_mmio {
 __u64 phys_addr;
 __u32 len;
 union {
  __u32 pad;
  __u32 pio;
 };
 __u8 data[8];
};
struct kvm_coalesced_mmio_ring {
 __u32 first, last;
 struct kvm_coalesced_mmio coalesced_mmio[];
};
struct kvm_translation {
 __u64 linear_address;
 __u64 physical_address;
 __u8 valid;
 __u8 writeable;
 __u8 usermode;
 __u8 pad[5];
};
struct kvm_s390_mem_op {
 __u64 gaddr;
 __u64 flags;
 __u32 size;
 __u32 op;
 __u64 buf;
 union {
  struct {
   __u8 ar;
   __u8 key;
  };
  __u32 sida_offset;
  __u8 reserved[32];
 };
};
struct kvm_interrupt {
 __u32 irq;
};
struct kvm_dirty_log {
 __u32 slot;
 __u32 padding1;
 union {
  void *dirty_bitmap;
  __u64 padding2;
 };
};
struct kvm_clear_dirty_log {
 __u32 slot;
 __u32 num_pages;
 __u64 first_page;
 union {
  void *dirty_bitmap;
  __u64 padding2;
 };
};
struct kvm_signal_mask {
 __u32 len;
 __u8 sigset[];
};
struct kvm_tpr_access_ctl {
 __u32 enabled;
 __u32 flags;
 __u32 reserved[8];
};
struct kvm_vapic_addr {
 __u64 vapic_addr;
};
struct kvm_mp_state {
 __u32 mp_state;
};
struct kvm_s390_psw {
 __u64 mask;
 __u64 addr;
};
struct kvm_s390_interrupt {
 __u32 type;
 __u32 parm;
 __u64 parm64;
};
struct kvm_s390_io_info {
 __u16 subchannel_id;
 __u16 subchannel_nr;
 __u32 io_int_parm;
 __u32 io_int_word;
};
struct kvm_s390_ext_info {
 __u32 ext_params;
 __u32 pad;
 __u64 ext_params2;
};
struct kvm_s390_pgm_info {
 __u64 trans_exc_code;
 __u64 mon_code;
 __u64 per_address;
 __u32 data_exc_code;
 __u16 code;
 __u16 mon_class_nr;
 __u8 per_code;
 __u8 per_atmid;
 __u8 exc_access_id;
 __u8 per_access_id;
 __u8 op_access_id;
 __u8 flags;
 __u8 pad[2];
};
struct kvm_s390_prefix_info {
 __u32 address;
};
struct kvm_s390_extcall_info {
 __u16 code;
};
struct kvm_s390_emerg_info {
 __u16 code;
};
struct kvm_s390_stop_info {
 __u32 flags;
};
struct kvm_s390_mchk_info {
 __u64 cr14;
 __u64 mcic;
 __u64 failing_storage_address;
 __u32 ext_damage_code;
 __u32 pad;
 __u8 fixed_logout[16];
};
struct kvm_s390_irq {
 __u64 type;
 union {
  struct kvm_s390_io_info io;
  struct kvm_s390_ext_info ext;
  struct kvm_s390_pgm_info pgm;
  struct kvm_s390_emerg_info emerg;
  struct kvm_s390_extcall_info extcall;
  struct kvm_s390_prefix_info prefix;
  struct kvm_s390_stop_info stop;
  struct kvm_s390_mchk_info mchk;
  char reserved[64];
 } u;
};
struct kvm_s390_irq_state {
 __u64 buf;
 __u32 flags;
 __u32 len;
 __u32 reserved[4];
};
struct kvm_guest_debug {
 __u32 control;
 __u32 pad;
 struct kvm_guest_debug_arch arch;
};
enum {
 kvm_ioeventfd_flag_nr_datamatch,
 kvm_ioeventfd_flag_nr_pio,
 kvm_ioeventfd_flag_nr_deassign,
 kvm_ioeventfd_flag_nr_virtio_ccw_notify,
 kvm_ioeventfd_flag_nr_fast_mmio,
 kvm_ioeventfd_flag_nr_max,
};
struct kvm_ioeventfd {
 __u64 datamatch;
 __u64 addr;
 __u32 len;
 __s32 fd;
 __u32 flags;
 __u8 pad[36];
};
struct kvm_enable_cap {
 __u32 cap;
 __u32 flags;
 __u64 args[4];
 __u8 pad[64];
};
struct kvm_ppc_pvinfo {
 __u32 flags;
 __u32 hcall[4];
 __u8 pad[108];
};
struct kvm_ppc_one_page_size {
 __u32 page_shift;
 __u32 pte_enc;
};
struct kvm_ppc_one_seg_page_size {
 __u32 page_shift;
 __u32 slb_enc;
 struct kvm_ppc_one_page_size enc[8];
};
struct kvm_ppc_smmu_info {
 __u64 flags;
 __u32 slb_size;
 __u16 data_keys;
 __u16 instr_keys;
 struct kvm_ppc_one_seg_page_size sps[8];
};
struct kvm_ppc_resize_hpt {
 __u64 flags;
 __u32 shift;
 __u32 pad;
};
struct kvm_irq_routing_irqchip {
 __u32 irqchip;
 __u32 pin;
};
struct kvm_irq_routing_msi {
 __u32 address_lo;
 __u32 address_hi;
 __u32 data;
 union {
  __u32 pad;
  __u32 devid;
 };
};
struct kvm_irq_routing_s390_adapter {
 __u64 ind_addr;
 __u64 summary_addr;
 __u64 ind_offset;
 __u32 summary_offset;
 __u32 adapter_id;
};
struct kvm_irq_routing_hv_sint {
 __u32 vcpu;
 __u32 sint;
};
struct kvm_irq_routing_xen_evtchn {
 __u32 port;
 __u32 vcpu;
 __u32 priority;
};
struct kvm_irq_routing_entry {
 __u32 gsi;
 __u32 type;
 __u32 flags;
 __u32 pad;
 union {
  struct kvm_irq_routing_irqchip irqchip;
  struct kvm_irq_routing_msi msi;
  struct kvm_irq_routing_s390_adapter adapter;
  struct kvm_irq_routing_hv_sint hv_sint;
  struct kvm_irq_routing_xen_evtchn xen_evtchn;
  __u32 pad[8];
 } u;
};
struct kvm_irq_routing {
 __u32 nr;
 __u32 flags;
 struct kvm_irq_routing_entry entries[];
};
struct kvm_x86_mce {
 __u64 status;
 __u64 addr;
 __u64 misc;
 __u64 mcg_status;
 __u8 bank;
 __u8 pad1[7];
 __u64 pad2[3];
};
struct kvm_xen_hvm_config {
 __u32 flags;
 __u32 msr;
 __u64 blob_addr_32;
 __u64 blob_addr_64;
 __u8 blob_size_32;
 __u8 blob_size_64;
 __u8 pad2[30];
};
struct kvm_irqfd {
 __u32 fd;
 __u32 gsi;
 __u32 flags;
 __u32 resamplefd;
 __u8 pad[16];
};
struct kvm_clock_data {
 __u64 clock;
 __u32 flags;
 __u32 pad0;
 __u64 realtime;
 __u64 host_tsc;
 __u32 pad[4];
};
struct kvm_config_tlb {
 __u64 params;
 __u64 array;
 __u32 mmu_type;
 __u32 array_len;
};
struct kvm_dirty_tlb {
 __u64 bitmap;
 __u32 num_dirty;
};
struct kvm_reg_list {
 __u64 n;
 __u64 reg[];
};
struct kvm_one_reg {
 __u64 id;
 __u64 addr;
};
struct kvm_msi {
 __u32 address_lo;
 __u32 address_hi;
 __u32 data;
 __u32 flags;
 __u32 devid;
 __u8 pad[12];
};
struct kvm_arm_device_addr {
 __u64 id;
 __u64 addr;
};
struct kvm_create_device {
 __u32 type;
 __u32 fd;
 __u32 flags;
};
struct kvm_device_attr {
 __u32 flags;
 __u32 group;
 __u64 attr;
 __u64 addr;
};
enum kvm_device_type {
 KVM_DEV_TYPE_FSL_MPIC_20 = 1,
 KVM_DEV_TYPE_FSL_MPIC_42,
 KVM_DEV_TYPE_XICS,
 KVM_DEV_TYPE_VFIO,
 KVM_DEV_TYPE_ARM_VGIC_V2,
 KVM_DEV_TYPE_FLIC,
 KVM_DEV_TYPE_ARM_VGIC_V3,
 KVM_DEV_TYPE_ARM_VGIC_ITS,
 KVM_DEV_TYPE_XIVE,
 KVM_DEV_TYPE_ARM_PV_TIME,
 KVM_DEV_TYPE_MAX,
};
struct kvm_vfio_spapr_tce {
 __s32 groupfd;
 __s32 tablefd;
};
struct kvm_s390_ucas_mapping {
 __u64 user_addr;
 __u64 vcpu_addr;
 __u64 length;
};
struct kvm_enc_region {
 __u64 addr;
 __u64 size;
};
struct kvm_s390_pv_sec_parm {
 __u64 origin;
 __u64 length;
};
struct kvm_s390_pv_unp {
 __u64 addr;
 __u64 size;
 __u64 tweak;
};
enum pv_cmd_dmp_id {
 KVM_PV_DUMP_INIT,
 KVM_PV_DUMP_CONFIG_STOR_STATE,
 KVM_PV_DUMP_COMPLETE,
 KVM_PV_DUMP_CPU,
};
struct kvm_s390_pv_dmp {
 __u64 subcmd;
 __u64 buff_addr;
 __u64 buff_len;
 __u64 gaddr;
 __u64 reserved[4];
};
enum pv_cmd_info_id {
 KVM_PV_INFO_VM,
 KVM_PV_INFO_DUMP,
};
struct kvm_s390_pv_info_dump {
 __u64 dump_cpu_buffer_len;
 __u64 dump_config_mem_buffer_per_1m;
 __u64 dump_config_finalize_len;
};
struct kvm_s390_pv_info_vm {
 __u64 inst_calls_list[4];
 __u64 max_cpus;
 __u64 max_guests;
 __u64 max_guest_addr;
 __u64 feature_indication;
};
struct kvm_s390_pv_info_header {
 __u32 id;
 __u32 len_max;
 __u32 len_written;
 __u32 reserved;
};
struct kvm_s390_pv_info {
 struct kvm_s390_pv_info_header header;
 union {
  struct kvm_s390_pv_info_dump dump;
  struct kvm_s390_pv_info_vm vm;
 };
};
enum pv_cmd_id {
 KVM_PV_ENABLE,
 KVM_PV_DISABLE,
 KVM_PV_SET_SEC_PARMS,
 KVM_PV_UNPACK,
 KVM_PV_VERIFY,
 KVM_PV_PREP_RESET,
 KVM_PV_UNSHARE_ALL,
 KVM_PV_INFO,
 KVM_PV_DUMP,
};
struct kvm_pv_cmd {
 __u32 cmd;
 __u16 rc;
 __u16 rrc;
 __u64 data;
 __u32 flags;
 __u32 reserved[3];
};
struct kvm_xen_hvm_attr {
 __u16 type;
 __u16 pad[3];
 union {
  __u8 long_mode;
  __u8 vector;
  struct {
   __u64 gfn;
  } shared_info;
  struct {
   __u32 send_port;
   __u32 type;
   __u32 flags;
   union {
    struct {
     __u32 port;
     __u32 vcpu;
     __u32 priority;
    } port;
    struct {
     __u32 port;
     __s32 fd;
    } eventfd;
    __u32 padding[4];
   } deliver;
  } evtchn;
  __u32 xen_version;
  __u64 pad[8];
 } u;
};
struct kvm_xen_vcpu_attr {
 __u16 type;
 __u16 pad[3];
 union {
  __u64 gpa;
  __u64 pad[8];
  struct {
   __u64 state;
   __u64 state_entry_time;
   __u64 time_running;
   __u64 time_runnable;
   __u64 time_blocked;
   __u64 time_offline;
  } runstate;
  __u32 vcpu_id;
  struct {
   __u32 port;
   __u32 priority;
   __u64 expires_ns;
  } timer;
  __u8 vector;
 } u;
};
enum sev_cmd_id {
 KVM_SEV_INIT = 0,
 KVM_SEV_ES_INIT,
 KVM_SEV_LAUNCH_START,
 KVM_SEV_LAUNCH_UPDATE_DATA,
 KVM_SEV_LAUNCH_UPDATE_VMSA,
 KVM_SEV_LAUNCH_SECRET,
 KVM_SEV_LAUNCH_MEASURE,
 KVM_SEV_LAUNCH_FINISH,
 KVM_SEV_SEND_START,
 KVM_SEV_SEND_UPDATE_DATA,
 KVM_SEV_SEND_UPDATE_VMSA,
 KVM_SEV_SEND_FINISH,
 KVM_SEV_RECEIVE_START,
 KVM_SEV_RECEIVE_UPDATE_DATA,
 KVM_SEV_RECEIVE_UPDATE_VMSA,
 KVM_SEV_RECEIVE_FINISH,
 KVM_SEV_GUEST_STATUS,
 KVM_SEV_DBG_DECRYPT,
 KVM_SEV_DBG_ENCRYPT,
 KVM_SEV_CERT_EXPORT,
 KVM_SEV_GET_ATTESTATION_REPORT,
 KVM_SEV_SEND_CANCEL,
 KVM_SEV_NR_MAX,
};
struct kvm_sev_cmd {
 __u32 id;
 __u64 data;
 __u32 error;
 __u32 sev_fd;
};
struct kvm_sev_launch_start {
 __u32 handle;
 __u32 policy;
 __u64 dh_uaddr;
 __u32 dh_len;
 __u64 session_uaddr;
 __u32 session_len;
};
struct kvm_sev_launch_update_data {
 __u64 uaddr;
 __u32 len;
};
struct kvm_sev_launch_secret {
 __u64 hdr_uaddr;
 __u32 hdr_len;
 __u64 guest_uaddr;
 __u32 guest_len;
 __u64 trans_uaddr;
 __u32 trans_len;
};
struct kvm_sev_launch_measure {
 __u64 uaddr;
 __u32 len;
};
struct kvm_sev_guest_status {
 __u32 handle;
 __u32 policy;
 __u32 state;
};
struct kvm_sev_dbg {
 __u64 src_uaddr;
 __u64 dst_uaddr;
 __u32 len;
};
struct kvm_sev_attestation_report {
 __u8 mnonce[16];
 __u64 uaddr;
 __u32 len;
};
struct kvm_sev_send_start {
 __u32 policy;
 __u64 pdh_cert_uaddr;
 __u32 pdh_cert_len;
 __u64 plat_certs_uaddr;
 __u32 plat_certs_len;
 __u64 amd_certs_uaddr;
 __u32 amd_certs_len;
 __u64 session_uaddr;
 __u32 session_len;
};
struct kvm_sev_send_update_data {
 __u64 hdr_uaddr;
 __u32 hdr_len;
 __u64 guest_uaddr;
 __u32 guest_len;
 __u64 trans_uaddr;
 __u32 trans_len;
};
struct kvm_sev_receive_start {
 __u32 handle;
 __u32 policy;
 __u64 pdh_uaddr;
 __u32 pdh_len;
 __u64 session_uaddr;
 __u32 session_len;
};
struct kvm_sev_receive_update_data {
 __u64 hdr_uaddr;
 __u32 hdr_len;
 __u64 guest_uaddr;
 __u32 guest_len;
 __u64 trans_uaddr;
 __u32 trans_len;
};
struct kvm_assigned_pci_dev {
 __u32 assigned_dev_id;
 __u32 busnr;
 __u32 devfn;
 __u32 flags;
 __u32 segnr;
 union {
  __u32 reserved[11];
 };
};
struct kvm_assigned_irq {
 __u32 assigned_dev_id;
 __u32 host_irq;
 __u32 guest_irq;
 __u32 flags;
 union {
  __u32 reserved[12];
 };
};
struct kvm_assigned_msix_nr {
 __u32 assigned_dev_id;
 __u16 entry_nr;
 __u16 padding;
};
struct kvm_assigned_msix_entry {
 __u32 assigned_dev_id;
 __u32 gsi;
 __u16 entry;
 __u16 padding[3];
};
struct kvm_hyperv_eventfd {
 __u32 conn_id;
 __s32 fd;
 __u32 flags;
 __u32 padding[3];
};
struct kvm_dirty_gfn {
 __u32 flags;
 __u32 slot;
 __u64 offset;
};
struct kvm_stats_header {
 __u32 flags;
 __u32 name_size;
 __u32 num_desc;
 __u32 id_offset;
 __u32 desc_offset;
 __u32 data_offset;
};
struct kvm_stats_desc {
 __u32 flags;
 __s16 exponent;
 __u16 size;
 __u32 offset;
 __u32 bucket_size;
 char name[];
};
struct kvm_s390_zpci_op {
 __u32 fh;
 __u8 op;
 __u8 pad[3];
 union {
  struct {
   __u64 ibv;
   __u64 sb;
   __u32 flags;
   __u32 noi;
   __u8 isc;
   __u8 sbo;
   __u16 pad;
  } reg_aen;
  __u64 reserved[8];
 } u;
};
"""

# Integer constants
KVMIO = 0xae
KVM_APIC_REG_SIZE = 0x400
KVM_API_VERSION = 0xc
KVM_ARM_DEV_EL1_PTIMER = 2
KVM_ARM_DEV_EL1_VTIMER = 1
KVM_ARM_DEV_PMU = 4
KVM_BUS_LOCK_DETECTION_EXIT = 2
KVM_BUS_LOCK_DETECTION_OFF = 1
KVM_CAP_ADJUST_CLOCK = 0x27
KVM_CAP_ARM_EL1_32BIT = 0x5d
KVM_CAP_ARM_INJECT_EXT_DABT = 0xb2
KVM_CAP_ARM_INJECT_SERROR_ESR = 0x9e
KVM_CAP_ARM_IRQ_LINE_LAYOUT_2 = 0xae
KVM_CAP_ARM_MTE = 0xcd
KVM_CAP_ARM_NISV_TO_USER = 0xb1
KVM_CAP_ARM_PMU_V3 = 0x7e
KVM_CAP_ARM_PSCI = 0x57
KVM_CAP_ARM_PSCI_0_2 = 0x66
KVM_CAP_ARM_PTRAUTH_ADDRESS = 0xab
KVM_CAP_ARM_PTRAUTH_GENERIC = 0xac
KVM_CAP_ARM_SET_DEVICE_ADDR = 0x58
KVM_CAP_ARM_SVE = 0xaa
KVM_CAP_ARM_SYSTEM_SUSPEND = 0xd8
KVM_CAP_ARM_USER_IRQ = 0x90
KVM_CAP_ARM_VM_IPA_SIZE = 0xa5
KVM_CAP_ASSIGN_DEV_IRQ = 0x1d
KVM_CAP_ASYNC_PF = 0x3b
KVM_CAP_ASYNC_PF_INT = 0xb7
KVM_CAP_BINARY_STATS_FD = 0xcb
KVM_CAP_CHECK_EXTENSION_VM = 0x69
KVM_CAP_CLOCKSOURCE = 8
KVM_CAP_COALESCED_MMIO = 0xf
KVM_CAP_COALESCED_PIO = 0xa2
KVM_CAP_DEBUGREGS = 0x32
KVM_CAP_DESTROY_MEMORY_REGION_WORKS = 0x15
KVM_CAP_DEVICE_CTRL = 0x59
KVM_CAP_DIRTY_LOG_RING = 0xc0
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 0xdf
KVM_CAP_DISABLE_QUIRKS = 0x74
KVM_CAP_DISABLE_QUIRKS2 = 0xd5
KVM_CAP_ENABLE_CAP = 0x36
KVM_CAP_ENABLE_CAP_VM = 0x62
KVM_CAP_ENFORCE_PV_FEATURE_CPUID = 0xbe
KVM_CAP_EXCEPTION_PAYLOAD = 0xa4
KVM_CAP_EXIT_HYPERCALL = 0xc9
KVM_CAP_EXIT_ON_EMULATION_FAILURE = 0xcc
KVM_CAP_EXT_CPUID = 7
KVM_CAP_EXT_EMUL_CPUID = 0x5f
KVM_CAP_GET_MSR_FEATURES = 0x99
KVM_CAP_GET_TSC_KHZ = 0x3d
KVM_CAP_GUEST_DEBUG_HW_BPS = 0x77
KVM_CAP_GUEST_DEBUG_HW_WPS = 0x78
KVM_CAP_HALT_POLL = 0xb6
KVM_CAP_HLT = 1
KVM_CAP_HYPERV = 0x2c
KVM_CAP_HYPERV_CPUID = 0xa7
KVM_CAP_HYPERV_DIRECT_TLBFLUSH = 0xaf
KVM_CAP_HYPERV_ENFORCE_CPUID = 0xc7
KVM_CAP_HYPERV_ENLIGHTENED_VMCS = 0xa3
KVM_CAP_HYPERV_EVENTFD = 0x9a
KVM_CAP_HYPERV_SEND_IPI = 0xa1
KVM_CAP_HYPERV_SPIN = 0x2e
KVM_CAP_HYPERV_SYNIC = 0x7b
KVM_CAP_HYPERV_SYNIC2 = 0x94
KVM_CAP_HYPERV_TIME = 0x60
KVM_CAP_HYPERV_TLBFLUSH = 0x9b
KVM_CAP_HYPERV_VAPIC = 0x2d
KVM_CAP_HYPERV_VP_INDEX = 0x95
KVM_CAP_IMMEDIATE_EXIT = 0x88
KVM_CAP_INTERNAL_ERROR_DATA = 0x28
KVM_CAP_INTR_SHADOW = 0x31
KVM_CAP_IOAPIC_POLARITY_IGNORED = 0x61
KVM_CAP_IOEVENTFD = 0x24
KVM_CAP_IOEVENTFD_ANY_LENGTH = 0x7a
KVM_CAP_IOEVENTFD_NO_LENGTH = 0x64
KVM_CAP_IOMMU = 0x12
KVM_CAP_IRQCHIP = 0
KVM_CAP_IRQFD = 0x20
KVM_CAP_IRQFD_RESAMPLE = 0x52
KVM_CAP_IRQ_INJECT_STATUS = 0x1a
KVM_CAP_IRQ_MPIC = 0x5a
KVM_CAP_IRQ_ROUTING = 0x19
KVM_CAP_IRQ_XICS = 0x5c
KVM_CAP_JOIN_MEMORY_REGIONS_WORKS = 0x1e
KVM_CAP_KVMCLOCK_CTRL = 0x4c
KVM_CAP_LAST_CPU = 0xb8
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT = 0xa6
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 0xa8
KVM_CAP_MAX_VCPUS = 0x42
KVM_CAP_MAX_VCPU_ID = 0x80
KVM_CAP_MCE = 0x1f
KVM_CAP_MIPS_64BIT = 0x8b
KVM_CAP_MIPS_FPU = 0x6f
KVM_CAP_MIPS_MSA = 0x70
KVM_CAP_MIPS_TE = 0x8a
KVM_CAP_MIPS_VZ = 0x89
KVM_CAP_MMU_SHADOW_CACHE_CONTROL = 2
KVM_CAP_MP_STATE = 0xe
KVM_CAP_MSI_DEVID = 0x83
KVM_CAP_MSR_PLATFORM_INFO = 0x9f
KVM_CAP_MULTI_ADDRESS_SPACE = 0x76
KVM_CAP_NESTED_STATE = 0x9d
KVM_CAP_NOP_IO_DELAY = 0xc
KVM_CAP_NR_MEMSLOTS = 0xa
KVM_CAP_NR_VCPUS = 9
KVM_CAP_ONE_REG = 0x46
KVM_CAP_PCI_2_3 = 0x4b
KVM_CAP_PCI_SEGMENT = 0x2f
KVM_CAP_PIT = 0xb
KVM_CAP_PIT2 = 0x21
KVM_CAP_PIT_STATE2 = 0x23
KVM_CAP_PMU_CAPABILITY = 0xd4
KVM_CAP_PMU_EVENT_FILTER = 0xad
KVM_CAP_PPC_AIL_MODE_3 = 0xd2
KVM_CAP_PPC_ALLOC_HTAB = 0x50
KVM_CAP_PPC_BOOKE_SREGS = 0x3e
KVM_CAP_PPC_BOOKE_WATCHDOG = 0x53
KVM_CAP_PPC_DAWR1 = 0xc2
KVM_CAP_PPC_ENABLE_HCALL = 0x68
KVM_CAP_PPC_EPR = 0x56
KVM_CAP_PPC_FIXUP_HCALL = 0x67
KVM_CAP_PPC_FWNMI = 0x92
KVM_CAP_PPC_GET_CPU_CHAR = 0x97
KVM_CAP_PPC_GET_PVINFO = 0x39
KVM_CAP_PPC_GET_SMMU_INFO = 0x4e
KVM_CAP_PPC_GUEST_DEBUG_SSTEP = 0xb0
KVM_CAP_PPC_HIOR = 0x43
KVM_CAP_PPC_HTAB_FD = 0x54
KVM_CAP_PPC_HTM = 0x84
KVM_CAP_PPC_HWRNG = 0x73
KVM_CAP_PPC_IRQ_LEVEL = 0x3a
KVM_CAP_PPC_IRQ_XIVE = 0xa9
KVM_CAP_PPC_MMU_HASH_V3 = 0x87
KVM_CAP_PPC_MMU_RADIX = 0x86
KVM_CAP_PPC_NESTED_HV = 0xa0
KVM_CAP_PPC_OSI = 0x34
KVM_CAP_PPC_PAIRED_SINGLES = 0x30
KVM_CAP_PPC_PAPR = 0x44
KVM_CAP_PPC_RMA = 0x41
KVM_CAP_PPC_RPT_INVALIDATE = 0xca
KVM_CAP_PPC_RTAS = 0x5b
KVM_CAP_PPC_SECURE_GUEST = 0xb5
KVM_CAP_PPC_SEGSTATE = 0x2b
KVM_CAP_PPC_SMT = 0x40
KVM_CAP_PPC_SMT_POSSIBLE = 0x93
KVM_CAP_PPC_UNSET_IRQ = 0x35
KVM_CAP_PTP_KVM = 0xc6
KVM_CAP_PV_MMU = 0xd
KVM_CAP_READONLY_MEM = 0x51
KVM_CAP_REINJECT_CONTROL = 0x18
KVM_CAP_S390_AIS = 0x8d
KVM_CAP_S390_AIS_MIGRATION = 0x96
KVM_CAP_S390_BPB = 0x98
KVM_CAP_S390_CMMA_MIGRATION = 0x91
KVM_CAP_S390_COW = 0x4f
KVM_CAP_S390_CPU_TOPOLOGY = 0xde
KVM_CAP_S390_CSS_SUPPORT = 0x55
KVM_CAP_S390_DIAG318 = 0xba
KVM_CAP_S390_GMAP = 0x47
KVM_CAP_S390_GS = 0x8c
KVM_CAP_S390_HPAGE_1M = 0x9c
KVM_CAP_S390_INJECT_IRQ = 0x71
KVM_CAP_S390_IRQCHIP = 0x63
KVM_CAP_S390_IRQ_STATE = 0x72
KVM_CAP_S390_MEM_OP = 0x6c
KVM_CAP_S390_MEM_OP_EXTENSION = 0xd3
KVM_CAP_S390_PROTECTED = 0xb4
KVM_CAP_S390_PROTECTED_DUMP = 0xd9
KVM_CAP_S390_PSW = 0x2a
KVM_CAP_S390_RI = 0x7c
KVM_CAP_S390_SKEYS = 0x6e
KVM_CAP_S390_UCONTROL = 0x49
KVM_CAP_S390_USER_INSTR0 = 0x82
KVM_CAP_S390_USER_SIGP = 0x6a
KVM_CAP_S390_USER_STSI = 0x6d
KVM_CAP_S390_VCPU_RESETS = 0xb3
KVM_CAP_S390_VECTOR_REGISTERS = 0x6b
KVM_CAP_S390_ZPCI_OP = 0xdd
KVM_CAP_SET_BOOT_CPU_ID = 0x22
KVM_CAP_SET_GUEST_DEBUG = 0x17
KVM_CAP_SET_GUEST_DEBUG2 = 0xc3
KVM_CAP_SET_IDENTITY_MAP_ADDR = 0x25
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_SGX_ATTRIBUTE = 0xc4
KVM_CAP_SIGNAL_MSI = 0x4d
KVM_CAP_SMALLER_MAXPHYADDR = 0xb9
KVM_CAP_SPAPR_MULTITCE = 0x5e
KVM_CAP_SPAPR_RESIZE_HPT = 0x85
KVM_CAP_SPAPR_TCE = 0x3f
KVM_CAP_SPAPR_TCE_64 = 0x7d
KVM_CAP_SPAPR_TCE_VFIO = 0x8e
KVM_CAP_SPLIT_IRQCHIP = 0x79
KVM_CAP_SREGS2 = 0xc8
KVM_CAP_STEAL_TIME = 0xbb
KVM_CAP_SW_TLB = 0x45
KVM_CAP_SYNC_MMU = 0x10
KVM_CAP_SYNC_REGS = 0x4a
KVM_CAP_SYSTEM_EVENT_DATA = 0xd7
KVM_CAP_SYS_ATTRIBUTES = 0xd1
KVM_CAP_SYS_HYPERV_CPUID = 0xbf
KVM_CAP_TSC_CONTROL = 0x3c
KVM_CAP_TSC_DEADLINE_TIMER = 0x48
KVM_CAP_USER_MEMORY = 3
KVM_CAP_USER_NMI = 0x16
KVM_CAP_VAPIC = 6
KVM_CAP_VCPU_ATTRIBUTES = 0x7f
KVM_CAP_VCPU_EVENTS = 0x29
KVM_CAP_VM_ATTRIBUTES = 0x65
KVM_CAP_VM_COPY_ENC_CONTEXT_FROM = 0xc5
KVM_CAP_VM_DISABLE_NX_HUGE_PAGES = 0xdc
KVM_CAP_VM_GPA_BITS = 0xcf
KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM = 0xce
KVM_CAP_VM_TSC_CONTROL = 0xd6
KVM_CAP_X2APIC_API = 0x81
KVM_CAP_X86_BUS_LOCK_EXIT = 0xc1
KVM_CAP_X86_DISABLE_EXITS = 0x8f
KVM_CAP_X86_MSR_FILTER = 0xbd
KVM_CAP_X86_NOTIFY_VMEXIT = 0xdb
KVM_CAP_X86_ROBUST_SINGLESTEP = 0x33
KVM_CAP_X86_SMM = 0x75
KVM_CAP_X86_TRIPLE_FAULT_EVENT = 0xda
KVM_CAP_X86_USER_SPACE_MSR = 0xbc
KVM_CAP_XCRS = 0x38
KVM_CAP_XEN_HVM = 0x26
KVM_CAP_XSAVE = 0x37
KVM_CAP_XSAVE2 = 0xd0
KVM_CLOCK_HOST_TSC = 8
KVM_CLOCK_REALTIME = 4
KVM_CLOCK_TSC_STABLE = 2
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1
KVM_CPUID_FLAG_STATEFUL_FUNC = 2
KVM_CPUID_FLAG_STATE_READ_NEXT = 4
KVM_CREATE_DEVICE_TEST = 1
KVM_DEV_ASSIGN_ENABLE_IOMMU = 1
KVM_DEV_ASSIGN_MASK_INTX = 4
KVM_DEV_ASSIGN_PCI_2_3 = 2
KVM_DEV_IRQ_GUEST_INTX = 0x100
KVM_DEV_IRQ_GUEST_MASK = 0xff00
KVM_DEV_IRQ_GUEST_MSI = 0x200
KVM_DEV_IRQ_GUEST_MSIX = 0x400
KVM_DEV_IRQ_HOST_INTX = 1
KVM_DEV_IRQ_HOST_MASK = 0xff
KVM_DEV_IRQ_HOST_MSI = 2
KVM_DEV_IRQ_HOST_MSIX = 4
KVM_DEV_TYPE_ARM_PV_TIME = 0xa
KVM_DEV_TYPE_ARM_VGIC_ITS = 8
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_TYPE_FLIC = 6
KVM_DEV_TYPE_FSL_MPIC_20 = 1
KVM_DEV_TYPE_FSL_MPIC_42 = 2
KVM_DEV_TYPE_VFIO = 4
KVM_DEV_TYPE_XICS = 3
KVM_DEV_TYPE_XIVE = 9
KVM_DEV_VFIO_GROUP = 1
KVM_DEV_VFIO_GROUP_ADD = 1
KVM_DEV_VFIO_GROUP_DEL = 2
KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE = 3
KVM_DIRTY_GFN_F_MASK = 3
KVM_DIRTY_LOG_INITIALLY_SET = 2
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1
KVM_DIRTY_LOG_PAGE_OFFSET = 0x40
KVM_EXIT_AP_RESET_HOLD = 0x20
KVM_EXIT_ARM_NISV = 0x1c
KVM_EXIT_DCR = 0xf
KVM_EXIT_DEBUG = 4
KVM_EXIT_DIRTY_RING_FULL = 0x1f
KVM_EXIT_EPR = 0x17
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_HLT = 5
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_HYPERV = 0x1b
KVM_EXIT_HYPERV_HCALL = 2
KVM_EXIT_HYPERV_SYNDBG = 3
KVM_EXIT_HYPERV_SYNIC = 1
KVM_EXIT_INTERNAL_ERROR = 0x11
KVM_EXIT_INTR = 0xa
KVM_EXIT_IO = 2
KVM_EXIT_IOAPIC_EOI = 0x1a
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_MMIO = 6
KVM_EXIT_NMI = 0x10
KVM_EXIT_NOTIFY = 0x25
KVM_EXIT_OSI = 0x12
KVM_EXIT_PAPR_HCALL = 0x13
KVM_EXIT_RISCV_CSR = 0x24
KVM_EXIT_RISCV_SBI = 0x23
KVM_EXIT_S390_RESET = 0xe
KVM_EXIT_S390_SIEIC = 0xd
KVM_EXIT_S390_STSI = 0x19
KVM_EXIT_S390_TSCH = 0x16
KVM_EXIT_S390_UCONTROL = 0x14
KVM_EXIT_SET_TPR = 0xb
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_SYSTEM_EVENT = 0x18
KVM_EXIT_TPR_ACCESS = 0xc
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_WATCHDOG = 0x15
KVM_EXIT_X86_BUS_LOCK = 0x21
KVM_EXIT_X86_RDMSR = 0x1d
KVM_EXIT_X86_WRMSR = 0x1e
KVM_EXIT_XEN = 0x22
KVM_EXIT_XEN_HCALL = 1
KVM_GUESTDBG_BLOCKIRQ = 0x100000
KVM_GUESTDBG_ENABLE = 1
KVM_GUESTDBG_INJECT_BP = 0x80000
KVM_GUESTDBG_INJECT_DB = 0x40000
KVM_GUESTDBG_SINGLESTEP = 2
KVM_GUESTDBG_USE_HW_BP = 0x20000
KVM_GUESTDBG_USE_SW_BP = 0x10000
KVM_HYPERV_CONN_ID_MASK = 0xffffff
KVM_HYPERV_EVENTFD_DEASSIGN = 1
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_IOAPIC_NUM_PINS = 0x18
KVM_IOEVENTFD_FLAG_DATAMATCH = 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 4
KVM_IOEVENTFD_FLAG_PIO = 2
KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY = 8
KVM_IOEVENTFD_VALID_FLAG_MASK = 0x1f
KVM_IRQCHIP_IOAPIC = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQFD_FLAG_DEASSIGN = 1
KVM_IRQFD_FLAG_RESAMPLE = 2
KVM_IRQ_ROUTING_HV_SINT = 4
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQ_ROUTING_S390_ADAPTER = 3
KVM_IRQ_ROUTING_XEN_EVTCHN = 5
KVM_MAX_MSIX_PER_DEV = 0x100
KVM_MAX_XCRS = 0x10
KVM_MEM_LOG_DIRTY_PAGES = 1
KVM_MEM_READONLY = 2
KVM_MMU_FSL_BOOKE_HV = 1
KVM_MMU_FSL_BOOKE_NOHV = 0
KVM_MP_STATE_AP_RESET_HOLD = 9
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_LOAD = 8
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_SUSPENDED = 0xa
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MSI_VALID_DEVID = 1
KVM_MSR_EXIT_REASON_FILTER = 4
KVM_MSR_EXIT_REASON_INVAL = 1
KVM_MSR_EXIT_REASON_UNKNOWN = 2
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_DEFAULT_DENY = 1
KVM_MSR_FILTER_MAX_BITMAP_SIZE = 0x600
KVM_MSR_FILTER_MAX_RANGES = 0x10
KVM_MSR_FILTER_READ = 1
KVM_MSR_FILTER_WRITE = 2
KVM_NOTIFY_CONTEXT_INVALID = 1
KVM_NR_INTERRUPTS = 0x100
KVM_NR_IRQCHIPS = 3
KVM_PIO_PAGE_OFFSET = 1
KVM_PIT_FLAGS_HPET_LEGACY = 1
KVM_PIT_FLAGS_SPEAKER_DATA_ON = 2
KVM_PIT_SPEAKER_DUMMY = 1
KVM_PMU_CAP_DISABLE = 1
KVM_PMU_EVENT_ALLOW = 0
KVM_PMU_EVENT_DENY = 1
KVM_PPC_1T_SEGMENTS = 2
KVM_PPC_NO_HASH = 4
KVM_PPC_PAGE_SIZES_MAX_SZ = 8
KVM_PPC_PAGE_SIZES_REAL = 1
KVM_PPC_PVINFO_FLAGS_EV_IDLE = 1
KVM_REG_ARCH_MASK = 0xff00000000000000
KVM_REG_ARM = 0x4000000000000000
KVM_REG_ARM64 = 0x6000000000000000
KVM_REG_GENERIC = 0
KVM_REG_IA64 = 0x3000000000000000
KVM_REG_MIPS = 0x7000000000000000
KVM_REG_PPC = 0x1000000000000000
KVM_REG_RISCV = 0x8000000000000000
KVM_REG_S390 = 0x5000000000000000
KVM_REG_SIZE_MASK = 0xf0000000000000
KVM_REG_SIZE_SHIFT = 0x34
KVM_REG_SIZE_U1024 = 0x70000000000000
KVM_REG_SIZE_U128 = 0x40000000000000
KVM_REG_SIZE_U16 = 0x10000000000000
KVM_REG_SIZE_U2048 = 0x80000000000000
KVM_REG_SIZE_U256 = 0x50000000000000
KVM_REG_SIZE_U32 = 0x20000000000000
KVM_REG_SIZE_U512 = 0x60000000000000
KVM_REG_SIZE_U64 = 0x30000000000000
KVM_REG_SIZE_U8 = 0
KVM_REG_X86 = 0x2000000000000000
KVM_RUN_X86_BUS_LOCK = 2
KVM_RUN_X86_SMM = 1
KVM_S390_CMMA_PEEK = 1
KVM_S390_GET_SKEYS_NONE = 1
KVM_S390_INT_CLOCK_COMP = 0xffff1004
KVM_S390_INT_CPU_TIMER = 0xffff1005
KVM_S390_INT_EMERGENCY = 0xffff1201
KVM_S390_INT_EXTERNAL_CALL = 0xffff1202
KVM_S390_INT_IO_AI_MASK = 0x4000000
KVM_S390_INT_IO_MAX = 0xfffdffff
KVM_S390_INT_IO_MIN = 0
KVM_S390_INT_PFAULT_DONE = 0xfffe0005
KVM_S390_INT_PFAULT_INIT = 0xfffe0004
KVM_S390_INT_SERVICE = 0xffff2401
KVM_S390_INT_VIRTIO = 0xffff2603
KVM_S390_MCHK = 0xfffe1000
KVM_S390_MEMOP_ABSOLUTE_READ = 4
KVM_S390_MEMOP_ABSOLUTE_WRITE = 5
KVM_S390_MEMOP_F_CHECK_ONLY = 1
KVM_S390_MEMOP_F_INJECT_EXCEPTION = 2
KVM_S390_MEMOP_F_SKEY_PROTECTION = 4
KVM_S390_MEMOP_LOGICAL_READ = 0
KVM_S390_MEMOP_LOGICAL_WRITE = 1
KVM_S390_MEMOP_SIDA_READ = 2
KVM_S390_MEMOP_SIDA_WRITE = 3
KVM_S390_PGM_FLAGS_ILC_0 = 2
KVM_S390_PGM_FLAGS_ILC_1 = 4
KVM_S390_PGM_FLAGS_ILC_MASK = 6
KVM_S390_PGM_FLAGS_ILC_VALID = 1
KVM_S390_PGM_FLAGS_NO_REWIND = 8
KVM_S390_PROGRAM_INT = 0xfffe0001
KVM_S390_RESET_CLEAR = 2
KVM_S390_RESET_CPU_INIT = 8
KVM_S390_RESET_IPL = 0x10
KVM_S390_RESET_POR = 1
KVM_S390_RESET_SUBSYSTEM = 4
KVM_S390_RESTART = 0xfffe0003
KVM_S390_SIE_PAGE_OFFSET = 1
KVM_S390_SIGP_SET_PREFIX = 0xfffe0002
KVM_S390_SIGP_STOP = 0xfffe0000
KVM_S390_SKEYS_MAX = 0x100000
KVM_S390_STOP_FLAG_STORE_STATUS = 1
KVM_S390_STORE_STATUS_NOADDR = -1
KVM_S390_STORE_STATUS_PREFIXED = -2
KVM_S390_ZPCIOP_DEREG_AEN = 1
KVM_S390_ZPCIOP_REGAEN_HOST = 1
KVM_S390_ZPCIOP_REG_AEN = 0
KVM_SREGS2_FLAGS_PDPTRS_VALID = 1
KVM_STATE_NESTED_EVMCS = 4
KVM_STATE_NESTED_FORMAT_SVM = 1
KVM_STATE_NESTED_FORMAT_VMX = 0
KVM_STATE_NESTED_GIF_SET = 0x100
KVM_STATE_NESTED_GUEST_MODE = 1
KVM_STATE_NESTED_MTF_PENDING = 8
KVM_STATE_NESTED_RUN_PENDING = 2
KVM_STATE_NESTED_SMM_GUEST_MODE = 1
KVM_STATE_NESTED_SMM_VMXON = 2
KVM_STATE_NESTED_SVM_VMCB_SIZE = 0x1000
KVM_STATE_NESTED_VMX_VMCS_SIZE = 0x1000
KVM_STATE_VMX_PREEMPTION_TIMER_DEADLINE = 1
KVM_STATS_BASE_SHIFT = 8
KVM_STATS_TYPE_SHIFT = 0
KVM_STATS_UNIT_SHIFT = 4
KVM_SYNC_X86_EVENTS = 4
KVM_SYNC_X86_REGS = 1
KVM_SYNC_X86_SREGS = 2
KVM_SYNC_X86_VALID_FIELDS = 7
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_SEV_TERM = 6
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_TRC_CYCLE_SIZE = 8
KVM_TRC_EXTRA_MAX = 7
KVM_TRC_HEAD_SIZE = 0xc
KVM_TRC_SHIFT = 0x10
KVM_VCPUEVENT_VALID_NMI_PENDING = 1
KVM_VCPUEVENT_VALID_PAYLOAD = 0x10
KVM_VCPUEVENT_VALID_SHADOW = 4
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 2
KVM_VCPUEVENT_VALID_SMM = 8
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20
KVM_VCPU_TSC_CTRL = 0
KVM_VCPU_TSC_OFFSET = 0
KVM_VM_MIPS_AUTO = 0
KVM_VM_MIPS_TE = 2
KVM_VM_MIPS_VZ = 1
KVM_VM_PPC_HV = 1
KVM_VM_PPC_PR = 2
KVM_VM_S390_UCONTROL = 1
KVM_VM_TYPE_ARM_IPA_SIZE_MASK = 0xff
KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK = 2
KVM_X2APIC_API_USE_32BIT_IDS = 1
KVM_X86_DISABLE_EXITS_CSTATE = 8
KVM_X86_DISABLE_EXITS_HLT = 2
KVM_X86_DISABLE_EXITS_MWAIT = 1
KVM_X86_DISABLE_EXITS_PAUSE = 4
KVM_X86_DISABLE_VALID_EXITS = 0xf
KVM_X86_NOTIFY_VMEXIT_ENABLED = 1
KVM_X86_NOTIFY_VMEXIT_USER = 2
KVM_X86_QUIRK_CD_NW_CLEARED = 2
KVM_X86_QUIRK_FIX_HYPERCALL_INSN = 0x20
KVM_X86_QUIRK_LAPIC_MMIO_HOLE = 4
KVM_X86_QUIRK_LINT0_REENABLED = 1
KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT = 0x10
KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS = 0x40
KVM_X86_QUIRK_OUT_7E_INC_RIP = 8
KVM_X86_SHADOW_INT_MOV_SS = 1
KVM_X86_SHADOW_INT_STI = 2
KVM_X86_XCOMP_GUEST_SUPP = 0
KVM_XEN_ATTR_TYPE_EVTCHN = 3
KVM_XEN_ATTR_TYPE_LONG_MODE = 0
KVM_XEN_ATTR_TYPE_SHARED_INFO = 1
KVM_XEN_ATTR_TYPE_UPCALL_VECTOR = 2
KVM_XEN_ATTR_TYPE_XEN_VERSION = 4
KVM_XEN_EVTCHN_DEASSIGN = 1
KVM_XEN_EVTCHN_RESET = 4
KVM_XEN_EVTCHN_UPDATE = 2
KVM_XEN_HVM_CONFIG_EVTCHN_2LEVEL = 0x10
KVM_XEN_HVM_CONFIG_EVTCHN_SEND = 0x20
KVM_XEN_HVM_CONFIG_HYPERCALL_MSR = 1
KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL = 2
KVM_XEN_HVM_CONFIG_RUNSTATE = 8
KVM_XEN_HVM_CONFIG_SHARED_INFO = 4
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR = 2
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADJUST = 5
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_CURRENT = 3
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_DATA = 4
KVM_XEN_VCPU_ATTR_TYPE_TIMER = 7
KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR = 8
KVM_XEN_VCPU_ATTR_TYPE_VCPU_ID = 6
KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO = 0
KVM_XEN_VCPU_ATTR_TYPE_VCPU_TIME_INFO = 1


def ioctl_numbers(sizeof):
    """Request numbers, given ``sizeof(ctype)`` for the argument types in CDEF."""
    return {
        'KVM_ARM_SET_DEVICE_ADDR': IOC(IOC_WRITE, 0xae, 0xab, sizeof('struct kvm_arm_device_addr')),
        'KVM_ARM_VCPU_FINALIZE': IOC(IOC_WRITE, 0xae, 0xc2, sizeof('int')),
        'KVM_ASSIGN_DEV_IRQ': IOC(IOC_WRITE, 0xae, 0x70, sizeof('struct kvm_assigned_irq')),
        'KVM_ASSIGN_PCI_DEVICE': IOC(IOC_READ, 0xae, 0x69, sizeof('struct kvm_assigned_pci_dev')),
        'KVM_ASSIGN_SET_INTX_MASK': IOC(IOC_WRITE, 0xae, 0xa4, sizeof('struct kvm_assigned_pci_dev')),
        'KVM_ASSIGN_SET_MSIX_ENTRY': IOC(IOC_WRITE, 0xae, 0x74, sizeof('struct kvm_assigned_msix_entry')),
        'KVM_ASSIGN_SET_MSIX_NR': IOC(IOC_WRITE, 0xae, 0x73, sizeof('struct kvm_assigned_msix_nr')),
        'KVM_CHECK_EXTENSION': IOC(IOC_NONE, 0xae, 0x03, 0),
        'KVM_CLEAR_DIRTY_LOG': IOC(IOC_READ | IOC_WRITE, 0xae, 0xc0, sizeof('struct kvm_clear_dirty_log')),
        'KVM_CREATE_DEVICE': IOC(IOC_READ | IOC_WRITE, 0xae, 0xe0, sizeof('struct kvm_create_device')),
        'KVM_CREATE_IRQCHIP': IOC(IOC_NONE, 0xae, 0x60, 0),
        'KVM_CREATE_PIT': IOC(IOC_NONE, 0xae, 0x64, 0),
        'KVM_CREATE_PIT2': IOC(IOC_WRITE, 0xae, 0x77, sizeof('struct kvm_pit_config')),
        'KVM_CREATE_VCPU': IOC(IOC_NONE, 0xae, 0x41, 0),
        'KVM_CREATE_VM': IOC(IOC_NONE, 0xae, 0x01, 0),
        'KVM_DEASSIGN_DEV_IRQ': IOC(IOC_WRITE, 0xae, 0x75, sizeof('struct kvm_assigned_irq')),
        'KVM_DEASSIGN_PCI_DEVICE': IOC(IOC_WRITE, 0xae, 0x72, sizeof('struct kvm_assigned_pci_dev')),
        'KVM_DIRTY_TLB': IOC(IOC_WRITE, 0xae, 0xaa, sizeof('struct kvm_dirty_tlb')),
        'KVM_ENABLE_CAP': IOC(IOC_WRITE, 0xae, 0xa3, sizeof('struct kvm_enable_cap')),
        'KVM_GET_API_VERSION': IOC(IOC_NONE, 0xae, 0x00, 0),
        'KVM_GET_CLOCK': IOC(IOC_READ, 0xae, 0x7c, sizeof('struct kvm_clock_data')),
        'KVM_GET_CPUID2': IOC(IOC_READ | IOC_WRITE, 0xae, 0x91, sizeof('struct kvm_cpuid2')),
        'KVM_GET_DEBUGREGS': IOC(IOC_READ, 0xae, 0xa1, sizeof('struct kvm_debugregs')),
        'KVM_GET_DEVICE_ATTR': IOC(IOC_WRITE, 0xae, 0xe2, sizeof('struct kvm_device_attr')),
        'KVM_GET_DIRTY_LOG': IOC(IOC_WRITE, 0xae, 0x42, sizeof('struct kvm_dirty_log')),
        'KVM_GET_EMULATED_CPUID': IOC(IOC_READ | IOC_WRITE, 0xae, 0x09, sizeof('struct kvm_cpuid2')),
        'KVM_GET_FPU': IOC(IOC_READ, 0xae, 0x8c, sizeof('struct kvm_fpu')),
        'KVM_GET_IRQCHIP': IOC(IOC_READ | IOC_WRITE, 0xae, 0x62, sizeof('struct kvm_irqchip')),
        'KVM_GET_LAPIC': IOC(IOC_READ, 0xae, 0x8e, sizeof('struct kvm_lapic_state')),
        'KVM_GET_MP_STATE': IOC(IOC_READ, 0xae, 0x98, sizeof('struct kvm_mp_state')),
        'KVM_GET_MSRS': IOC(IOC_READ | IOC_WRITE, 0xae, 0x88, sizeof('struct kvm_msrs')),
        'KVM_GET_MSR_FEATURE_INDEX_LIST': IOC(IOC_READ | IOC_WRITE, 0xae, 0x0a, sizeof('struct kvm_msr_list')),
        'KVM_GET_MSR_INDEX_LIST': IOC(IOC_READ | IOC_WRITE, 0xae, 0x02, sizeof('struct kvm_msr_list')),
        'KVM_GET_NESTED_STATE': IOC(IOC_READ | IOC_WRITE, 0xae, 0xbe, sizeof('struct kvm_nested_state')),
        'KVM_GET_NR_MMU_PAGES': IOC(IOC_NONE, 0xae, 0x45, 0),
        'KVM_GET_ONE_REG': IOC(IOC_WRITE, 0xae, 0xab, sizeof('struct kvm_one_reg')),
        'KVM_GET_PIT': IOC(IOC_READ | IOC_WRITE, 0xae, 0x65, sizeof('struct kvm_pit_state')),
        'KVM_GET_PIT2': IOC(IOC_READ, 0xae, 0x9f, sizeof('struct kvm_pit_state2')),
        'KVM_GET_REGS': IOC(IOC_READ, 0xae, 0x81, sizeof('struct kvm_regs')),
        'KVM_GET_REG_LIST': IOC(IOC_READ | IOC_WRITE, 0xae, 0xb0, sizeof('struct kvm_reg_list')),
        'KVM_GET_SREGS': IOC(IOC_READ, 0xae, 0x83, sizeof('struct kvm_sregs')),
        'KVM_GET_SREGS2': IOC(IOC_READ, 0xae, 0xcc, sizeof('struct kvm_sregs2')),
        'KVM_GET_STATS_FD': IOC(IOC_NONE, 0xae, 0xce, 0),
        'KVM_GET_SUPPORTED_CPUID': IOC(IOC_READ | IOC_WRITE, 0xae, 0x05, sizeof('struct kvm_cpuid2')),
        'KVM_GET_SUPPORTED_HV_CPUID': IOC(IOC_READ | IOC_WRITE, 0xae, 0xc1, sizeof('struct kvm_cpuid2')),
        'KVM_GET_TSC_KHZ': IOC(IOC_NONE, 0xae, 0xa3, 0),
        'KVM_GET_VCPU_EVENTS': IOC(IOC_READ, 0xae, 0x9f, sizeof('struct kvm_vcpu_events')),
        'KVM_GET_VCPU_MMAP_SIZE': IOC(IOC_NONE, 0xae, 0x04, 0),
        'KVM_GET_XCRS': IOC(IOC_READ, 0xae, 0xa6, sizeof('struct kvm_xcrs')),
        'KVM_GET_XSAVE': IOC(IOC_READ, 0xae, 0xa4, sizeof('struct kvm_xsave')),
        'KVM_GET_XSAVE2': IOC(IOC_READ, 0xae, 0xcf, sizeof('struct kvm_xsave')),
        'KVM_HAS_DEVICE_ATTR': IOC(IOC_WRITE, 0xae, 0xe3, sizeof('struct kvm_device_attr')),
        'KVM_HYPERV_EVENTFD': IOC(IOC_WRITE, 0xae, 0xbd, sizeof('struct kvm_hyperv_eventfd')),
        'KVM_INTERRUPT': IOC(IOC_WRITE, 0xae, 0x86, sizeof('struct kvm_interrupt')),
        'KVM_IOEVENTFD': IOC(IOC_WRITE, 0xae, 0x79, sizeof('struct kvm_ioeventfd')),
        'KVM_IRQFD': IOC(IOC_WRITE, 0xae, 0x76, sizeof('struct kvm_irqfd')),
        'KVM_IRQ_LINE': IOC(IOC_WRITE, 0xae, 0x61, sizeof('struct kvm_irq_level')),
        'KVM_IRQ_LINE_STATUS': IOC(IOC_READ | IOC_WRITE, 0xae, 0x67, sizeof('struct kvm_irq_level')),
        'KVM_KVMCLOCK_CTRL': IOC(IOC_NONE, 0xae, 0xad, 0),
        'KVM_MEMORY_ENCRYPT_OP': IOC(IOC_READ | IOC_WRITE, 0xae, 0xba, sizeof('unsigned long')),
        'KVM_MEMORY_ENCRYPT_REG_REGION': IOC(IOC_READ, 0xae, 0xbb, sizeof('struct kvm_enc_region')),
        'KVM_MEMORY_ENCRYPT_UNREG_REGION': IOC(IOC_READ, 0xae, 0xbc, sizeof('struct kvm_enc_region')),
        'KVM_NMI': IOC(IOC_NONE, 0xae, 0x9a, 0),
        'KVM_PPC_ALLOCATE_HTAB': IOC(IOC_READ | IOC_WRITE, 0xae, 0xa7, sizeof('__u32')),
        'KVM_PPC_GET_PVINFO': IOC(IOC_WRITE, 0xae, 0xa1, sizeof('struct kvm_ppc_pvinfo')),
        'KVM_PPC_GET_SMMU_INFO': IOC(IOC_READ, 0xae, 0xa6, sizeof('struct kvm_ppc_smmu_info')),
        'KVM_PPC_RESIZE_HPT_COMMIT': IOC(IOC_READ, 0xae, 0xae, sizeof('struct kvm_ppc_resize_hpt')),
        'KVM_PPC_RESIZE_HPT_PREPARE': IOC(IOC_READ, 0xae, 0xad, sizeof('struct kvm_ppc_resize_hpt')),
        'KVM_PPC_SVM_OFF': IOC(IOC_NONE, 0xae, 0xb3, 0),
        'KVM_REGISTER_COALESCED_MMIO': IOC(IOC_WRITE, 0xae, 0x67, sizeof('struct kvm_coalesced_mmio_zone')),
        'KVM_REINJECT_CONTROL': IOC(IOC_NONE, 0xae, 0x71, 0),
        'KVM_RESET_DIRTY_RINGS': IOC(IOC_NONE, 0xae, 0xc7, 0),
        'KVM_RUN': IOC(IOC_NONE, 0xae, 0x80, 0),
        'KVM_S390_CLEAR_RESET': IOC(IOC_NONE, 0xae, 0xc4, 0),
        'KVM_S390_ENABLE_SIE': IOC(IOC_NONE, 0xae, 0x06, 0),
        'KVM_S390_GET_CMMA_BITS': IOC(IOC_READ | IOC_WRITE, 0xae, 0xb8, sizeof('struct kvm_s390_cmma_log')),
        'KVM_S390_GET_IRQ_STATE': IOC(IOC_WRITE, 0xae, 0xb6, sizeof('struct kvm_s390_irq_state')),
        'KVM_S390_GET_SKEYS': IOC(IOC_WRITE, 0xae, 0xb2, sizeof('struct kvm_s390_skeys')),
        'KVM_S390_INITIAL_RESET': IOC(IOC_NONE, 0xae, 0x97, 0),
        'KVM_S390_INTERRUPT': IOC(IOC_WRITE, 0xae, 0x94, sizeof('struct kvm_s390_interrupt')),
        'KVM_S390_IRQ': IOC(IOC_WRITE, 0xae, 0xb4, sizeof('struct kvm_s390_irq')),
        'KVM_S390_MEM_OP': IOC(IOC_WRITE, 0xae, 0xb1, sizeof('struct kvm_s390_mem_op')),
        'KVM_S390_NORMAL_RESET': IOC(IOC_NONE, 0xae, 0xc3, 0),
        'KVM_S390_PV_COMMAND': IOC(IOC_READ | IOC_WRITE, 0xae, 0xc5, sizeof('struct kvm_pv_cmd')),
        'KVM_S390_PV_CPU_COMMAND': IOC(IOC_READ | IOC_WRITE, 0xae, 0xd0, sizeof('struct kvm_pv_cmd')),
        'KVM_S390_SET_CMMA_BITS': IOC(IOC_WRITE, 0xae, 0xb9, sizeof('struct kvm_s390_cmma_log')),
        'KVM_S390_SET_INITIAL_PSW': IOC(IOC_WRITE, 0xae, 0x96, sizeof('struct kvm_s390_psw')),
        'KVM_S390_SET_IRQ_STATE': IOC(IOC_WRITE, 0xae, 0xb5, sizeof('struct kvm_s390_irq_state')),
        'KVM_S390_SET_SKEYS': IOC(IOC_WRITE, 0xae, 0xb3, sizeof('struct kvm_s390_skeys')),
        'KVM_S390_STORE_STATUS': IOC(IOC_WRITE, 0xae, 0x95, sizeof('unsigned long')),
        'KVM_S390_UCAS_MAP': IOC(IOC_WRITE, 0xae, 0x50, sizeof('struct kvm_s390_ucas_mapping')),
        'KVM_S390_UCAS_UNMAP': IOC(IOC_WRITE, 0xae, 0x51, sizeof('struct kvm_s390_ucas_mapping')),
        'KVM_S390_VCPU_FAULT': IOC(IOC_WRITE, 0xae, 0x52, sizeof('unsigned long')),
        'KVM_S390_ZPCI_OP': IOC(IOC_WRITE, 0xae, 0xd1, sizeof('struct kvm_s390_zpci_op')),
        'KVM_SET_BOOT_CPU_ID': IOC(IOC_NONE, 0xae, 0x78, 0),
        'KVM_SET_CLOCK': IOC(IOC_WRITE, 0xae, 0x7b, sizeof('struct kvm_clock_data')),
        'KVM_SET_CPUID': IOC(IOC_WRITE, 0xae, 0x8a, sizeof('struct kvm_cpuid')),
        'KVM_SET_CPUID2': IOC(IOC_WRITE, 0xae, 0x90, sizeof('struct kvm_cpuid2')),
        'KVM_SET_DEBUGREGS': IOC(IOC_WRITE, 0xae, 0xa2, sizeof('struct kvm_debugregs')),
        'KVM_SET_DEVICE_ATTR': IOC(IOC_WRITE, 0xae, 0xe1, sizeof('struct kvm_device_attr')),
        'KVM_SET_FPU': IOC(IOC_WRITE, 0xae, 0x8d, sizeof('struct kvm_fpu')),
        'KVM_SET_GSI_ROUTING': IOC(IOC_WRITE, 0xae, 0x6a, sizeof('struct kvm_irq_routing')),
        'KVM_SET_GUEST_DEBUG': IOC(IOC_WRITE, 0xae, 0x9b, sizeof('struct kvm_guest_debug')),
        'KVM_SET_IDENTITY_MAP_ADDR': IOC(IOC_WRITE, 0xae, 0x48, sizeof('__u64')),
        'KVM_SET_IRQCHIP': IOC(IOC_READ, 0xae, 0x63, sizeof('struct kvm_irqchip')),
        'KVM_SET_LAPIC': IOC(IOC_WRITE, 0xae, 0x8f, sizeof('struct kvm_lapic_state')),
        'KVM_SET_MEMORY_ALIAS': IOC(IOC_WRITE, 0xae, 0x43, sizeof('struct kvm_memory_alias')),
        'KVM_SET_MEMORY_REGION': IOC(IOC_WRITE, 0xae, 0x40, sizeof('struct kvm_memory_region')),
        'KVM_SET_MP_STATE': IOC(IOC_WRITE, 0xae, 0x99, sizeof('struct kvm_mp_state')),
        'KVM_SET_MSRS': IOC(IOC_WRITE, 0xae, 0x89, sizeof('struct kvm_msrs')),
        'KVM_SET_NESTED_STATE': IOC(IOC_WRITE, 0xae, 0xbf, sizeof('struct kvm_nested_state')),
        'KVM_SET_NR_MMU_PAGES': IOC(IOC_NONE, 0xae, 0x44, 0),
        'KVM_SET_ONE_REG': IOC(IOC_WRITE, 0xae, 0xac, sizeof('struct kvm_one_reg')),
        'KVM_SET_PIT': IOC(IOC_READ, 0xae, 0x66, sizeof('struct kvm_pit_state')),
        'KVM_SET_PIT2': IOC(IOC_WRITE, 0xae, 0xa0, sizeof('struct kvm_pit_state2')),
        'KVM_SET_PMU_EVENT_FILTER': IOC(IOC_WRITE, 0xae, 0xb2, sizeof('struct kvm_pmu_event_filter')),
        'KVM_SET_REGS': IOC(IOC_WRITE, 0xae, 0x82, sizeof('struct kvm_regs')),
        'KVM_SET_SIGNAL_MASK': IOC(IOC_WRITE, 0xae, 0x8b, sizeof('struct kvm_signal_mask')),
        'KVM_SET_SREGS': IOC(IOC_WRITE, 0xae, 0x84, sizeof('struct kvm_sregs')),
        'KVM_SET_SREGS2': IOC(IOC_WRITE, 0xae, 0xcd, sizeof('struct kvm_sregs2')),
        'KVM_SET_TSC_KHZ': IOC(IOC_NONE, 0xae, 0xa2, 0),
        'KVM_SET_TSS_ADDR': IOC(IOC_NONE, 0xae, 0x47, 0),
        'KVM_SET_USER_MEMORY_REGION': IOC(IOC_WRITE, 0xae, 0x46, sizeof('struct kvm_userspace_memory_region')),
        'KVM_SET_VAPIC_ADDR': IOC(IOC_WRITE, 0xae, 0x93, sizeof('struct kvm_vapic_addr')),
        'KVM_SET_VCPU_EVENTS': IOC(IOC_WRITE, 0xae, 0xa0, sizeof('struct kvm_vcpu_events')),
        'KVM_SET_XCRS': IOC(IOC_WRITE, 0xae, 0xa7, sizeof('struct kvm_xcrs')),
        'KVM_SET_XSAVE': IOC(IOC_WRITE, 0xae, 0xa5, sizeof('struct kvm_xsave')),
        'KVM_SIGNAL_MSI': IOC(IOC_WRITE, 0xae, 0xa5, sizeof('struct kvm_msi')),
        'KVM_SMI': IOC(IOC_NONE, 0xae, 0xb7, 0),
        'KVM_TPR_ACCESS_REPORTING': IOC(IOC_READ | IOC_WRITE, 0xae, 0x92, sizeof('struct kvm_tpr_access_ctl')),
        'KVM_TRANSLATE': IOC(IOC_READ | IOC_WRITE, 0xae, 0x85, sizeof('struct kvm_translation')),
        'KVM_UNREGISTER_COALESCED_MMIO': IOC(IOC_WRITE, 0xae, 0x68, sizeof('struct kvm_coalesced_mmio_zone')),
        'KVM_X86_GET_MCE_CAP_SUPPORTED': IOC(IOC_READ, 0xae, 0x9d, sizeof('__u64')),
        'KVM_X86_SETUP_MCE': IOC(IOC_WRITE, 0xae, 0x9c, sizeof('__u64')),
        'KVM_X86_SET_MCE': IOC(IOC_WRITE, 0xae, 0x9e, sizeof('struct kvm_x86_mce')),
        'KVM_X86_SET_MSR_FILTER': IOC(IOC_WRITE, 0xae, 0xc6, sizeof('struct kvm_msr_filter')),
        'KVM_XEN_HVM_CONFIG': IOC(IOC_WRITE, 0xae, 0x7a, sizeof('struct kvm_xen_hvm_config')),
        'KVM_XEN_HVM_EVTCHN_SEND': IOC(IOC_WRITE, 0xae, 0xd0, sizeof('struct kvm_irq_routing_xen_evtchn')),
        'KVM_XEN_HVM_GET_ATTR': IOC(IOC_READ | IOC_WRITE, 0xae, 0xc8, sizeof('struct kvm_xen_hvm_attr')),
        'KVM_XEN_HVM_SET_ATTR': IOC(IOC_WRITE, 0xae, 0xc9, sizeof('struct kvm_xen_hvm_attr')),
        'KVM_XEN_VCPU_GET_ATTR': IOC(IOC_READ | IOC_WRITE, 0xae, 0xca, sizeof('struct kvm_xen_vcpu_attr')),
        'KVM_XEN_VCPU_SET_ATTR': IOC(IOC_WRITE, 0xae, 0xcb, sizeof('struct kvm_xen_vcpu_attr')),
    }
