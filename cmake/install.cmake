# Install rules for everything besides the programs (bd_program installs those): man pages
# built from man/*.scd with scdoc, the configuration, the systemd units, sysusers.d and
# tmpfiles.d files, bash completion and the examples. Included by the top-level
# CMakeLists.txt. The paths are absolute where the system looks only there (/etc/batchd is
# batchd's compiled-in default; systemd reads units from fixed directories), and relative to
# the prefix otherwise.

set(BATCHD_CONFDIR "/etc/batchd" CACHE PATH "Where batchd.conf and templates/ are installed")
set(BATCHD_SYSTEMDUNITDIR "/usr/lib/systemd/system" CACHE PATH
    "Where batchd.service and batchd.socket are installed (Debian 12 packages: /lib/systemd/system)")
set(BATCHD_SYSUSERSDIR "/usr/lib/sysusers.d" CACHE PATH "Where the sysusers.d file is installed")
set(BATCHD_TMPFILESDIR "/usr/lib/tmpfiles.d" CACHE PATH "Where the tmpfiles.d file is installed")
set(BATCHD_BASHCOMPLETIONDIR "${CMAKE_INSTALL_DATADIR}/bash-completion/completions" CACHE PATH
    "Where bash completion for batchctl is installed")
option(BATCHD_MAN "Build and install the man pages (needs scdoc)" ON)

# Man pages: man/NAME.SECTION.scd -> build/man/NAME.SECTION, part of the default build.
if(BATCHD_MAN)
  find_program(SCDOC scdoc)
  if(NOT SCDOC)
    message(FATAL_ERROR "scdoc not found: install it (apt install scdoc) to build the man pages, "
                        "or configure with -DBATCHD_MAN=OFF")
  endif()
  file(GLOB man_srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/man/*.scd)
  set(man_pages "")
  foreach(src IN LISTS man_srcs)
    get_filename_component(page ${src} NAME_WLE) # batchd.8
    string(REGEX MATCH "[0-9]$" section ${page})
    set(out ${PROJECT_BINARY_DIR}/man/${page})
    # Through a temporary file, so an scdoc error never leaves a half-written page behind.
    add_custom_command(
      OUTPUT ${out}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${PROJECT_BINARY_DIR}/man
      COMMAND sh -c "\"$0\" < \"$1\" > \"$2.tmp\" && mv \"$2.tmp\" \"$2\"" ${SCDOC} ${src} ${out}
      DEPENDS ${src}
      COMMENT "scdoc ${page}"
      VERBATIM)
    list(APPEND man_pages ${out})
    install(FILES ${out} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
  endforeach()
  add_custom_target(man ALL DEPENDS ${man_pages})
endif()

install(FILES ${PROJECT_SOURCE_DIR}/conf/batchd.conf DESTINATION ${BATCHD_CONFDIR})
install(FILES ${PROJECT_SOURCE_DIR}/conf/templates/default.json
        DESTINATION ${BATCHD_CONFDIR}/templates)

install(FILES ${PROJECT_SOURCE_DIR}/systemd/batchd.service ${PROJECT_SOURCE_DIR}/systemd/batchd.socket
        DESTINATION ${BATCHD_SYSTEMDUNITDIR})
install(FILES ${PROJECT_SOURCE_DIR}/systemd/batchd.sysusers DESTINATION ${BATCHD_SYSUSERSDIR}
        RENAME batchd.conf)
install(FILES ${PROJECT_SOURCE_DIR}/systemd/batchd.tmpfiles DESTINATION ${BATCHD_TMPFILESDIR}
        RENAME batchd.conf)

# OPTIONAL: the completion is written separately; the package check insists on it.
install(FILES ${PROJECT_SOURCE_DIR}/completion/batchctl.bash DESTINATION ${BATCHD_BASHCOMPLETIONDIR}
        RENAME batchctl OPTIONAL)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/examples/ DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
